"""A p2sgw gateway running in a lab's gw namespace, initialised through its own CLI."""

from __future__ import annotations

import json
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from .lab import Lab


@dataclass
class RunningGateway:
    lab: Lab
    state_dir: Path
    process: subprocess.Popen | None = None
    profiles: dict[str, Path] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab.gateway_cli(self.state_dir, *args, check=check)

    def start(self) -> RunningGateway:
        self.process = self.lab.start_gateway(self.state_dir)
        self.lab.wait_gateway_ready(self.state_dir, self.process, timeout=30)
        return self

    def stop(self) -> int:
        assert self.process is not None
        code = self.lab.stop(self.process, timeout=10)
        self.process = None
        return code

    def edit_config(self, **changes) -> None:
        """Change p2sgw.toml before start (dotted keys: openvpn.reneg_sec=10)."""
        path = self.state_dir / "p2sgw.toml"
        data = tomllib.loads(path.read_text())
        for key, value in changes.items():
            section, _, name = key.rpartition("__")
            target = data[section] if section else data
            target[name] = value
        path.write_text(tomli_w.dumps(data))

    def issue(self, name: str, days: int | None = None) -> Path:
        """Issue a client certificate and write its .ovpn profile; returns the profile path."""
        args = ["client", "issue", name] + (["--days", str(days)] if days else [])
        self.cli(*args)
        profile = self.lab.workdir / f"{name}.ovpn"
        self.cli("profile", name, "--type", "openvpn", "-o", str(profile))
        self.profiles[name] = profile
        return profile

    def sessions(self) -> list[dict]:
        return json.loads(self.cli("sessions", "--json").stdout)

    def log_text(self) -> str:
        path = self.lab.workdir / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""


def single_transport_profile(profile: Path, proto: str) -> Path:
    """Copy of a profile keeping only the <connection> block for `proto` (udp or tcp)."""
    text = profile.read_text()
    kept, block, inside = [], [], False
    for line in text.splitlines(keepends=True):
        if line.strip() == "<connection>":
            inside, block = True, [line]
            continue
        if inside:
            block.append(line)
            if line.strip() == "</connection>":
                inside = False
                if any(l.startswith("remote ") and l.split()[-1] == proto for l in block):
                    kept += block
            continue
        kept.append(line)
    out = profile.with_name(f"{profile.stem}-{proto}.ovpn")
    out.write_text("".join(kept))
    return out


def init_gateway(lab: Lab, *extra: str, pool: str | None = None) -> RunningGateway:
    state_dir = lab.workdir / "state"
    gw = RunningGateway(lab, state_dir)
    gw.cli(
        "init", "--public-address", lab.gw_client_ip, "--pool", pool or lab.pool,
        "--route", "10.1.0.0/24", *extra,
    )
    return gw
