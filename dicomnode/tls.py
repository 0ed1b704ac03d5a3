"""SSL contexts for DICOM TLS, both directions, following the BCP 195 profile DCMTK defaults to:
TLS 1.2 or newer, certificates verified against the configured CAs, no compression or renegotiation."""

from __future__ import annotations

import ssl

from dicomnode.config import ConfigError, TLSConfig


def _base(purpose: ssl.Purpose, tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=tls.ca_certificates or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificate/private key: {exc}") from None
    return ctx


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.CLIENT_AUTH, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """Peers are checked against the CAs; the host name is checked too when the destination names one
    (an IP address in the config is matched against the certificate's IP SANs)."""
    return _base(ssl.Purpose.SERVER_AUTH, tls)
