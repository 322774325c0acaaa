from p2sgw.cli import app

app(prog_name="p2sgw")
