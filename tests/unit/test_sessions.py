"""The session registry: lookups by id and by sign-in token."""

from __future__ import annotations

from p2sgw.sessions import Session, SessionRegistry


def session(token_id: bytes | None) -> Session:
    return Session(protocol="openvpn-udp", identity="alice", auth_method="oidc", remote="192.0.2.1:1",
                   tunnel=None, token_id=token_id)  # type: ignore[arg-type]


def test_sessions_by_token_follow_add_and_remove():
    registry = SessionRegistry()
    first, second, other, plain = session(b"t1"), session(b"t1"), session(b"t2"), session(None)
    for s in (first, second, other, plain):
        registry.add(s)
    assert {s.id for s in registry.with_token(b"t1")} == {first.id, second.id}
    assert registry.with_token(b"t2") == [other] and registry.with_token(b"none") == []
    holders = registry.with_token(b"t1")
    registry.remove(first)  # a caller may end sessions while walking what with_token returned
    assert holders[0] in (first, second) and registry.with_token(b"t1") == [second]
    registry.remove(second)
    registry.remove(second)  # twice is harmless
    assert registry.with_token(b"t1") == [] and len(registry) == 2
