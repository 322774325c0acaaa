"""Client-certificate authentication.

TLS (OpenSSL) has already checked the chain to a trusted root and the validity period; this adds
what OpenSSL does not enforce for a server: the clientAuth EKU, the revocation list (SHA-1
thumbprints, as operators know them from the cloud gateway) and a usable identity (the CN).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..pki import thumbprint
from .base import AuthResult, Credentials

METHOD = "certificate"


class CertificateAuthenticator:
    method = METHOD

    def __init__(self, revoked_thumbprints: set[str]) -> None:
        self.revoked = revoked_thumbprints

    def check(self, credentials: Credentials, now: dt.datetime | None = None) -> AuthResult:
        if not credentials.peer_chain:
            return AuthResult.refuse(METHOD, "no client certificate")
        leaf = credentials.peer_chain[0]
        cn_attrs = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        identity = str(cn_attrs[0].value) if cn_attrs else ""
        now = now or dt.datetime.now(dt.UTC)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            return AuthResult.refuse(METHOD, "certificate expired or not yet valid", identity)
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return AuthResult.refuse(METHOD, "certificate has no extended key usage (clientAuth required)", identity)
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            return AuthResult.refuse(METHOD, "certificate lacks the clientAuth extended key usage", identity)
        if not identity:
            return AuthResult.refuse(METHOD, "certificate has no common name")
        tp = thumbprint(leaf)
        if tp in self.revoked:
            return AuthResult(False, identity, METHOD, "certificate revoked", cert_thumbprint=tp)
        return AuthResult(True, identity, METHOD, cert_thumbprint=tp)

    async def authenticate(self, credentials: Credentials) -> AuthResult:
        return self.check(credentials)
