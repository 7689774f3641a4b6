"""TLS contexts for the DICOM TLS listener and for outbound associations (PS3.15 B.1, BCP195).

Owns: the one place where TLS settings are decided: TLS 1.2 as the floor, forward-secret AEAD
cipher suites for 1.2 (TLS 1.3's are all such), no compression, and certificate verification.
The standard library's ssl module does the work; nothing here is DICOM-specific beyond the profile.
"""

from __future__ import annotations

import ssl

from dicomd.config import TLSConfig

# BCP195 (RFC 9325) recommended TLS 1.2 suites: ECDHE/DHE key exchange with AES-GCM or ChaCha20.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context(config: TLSConfig) -> ssl.SSLContext:
    """For the TLS listener; with verify_clients, a client certificate is required."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(config.certificate, config.private_key)
    if config.ca_certificates:
        context.load_verify_locations(config.ca_certificates)
    context.verify_mode = ssl.CERT_REQUIRED if config.verify_clients else ssl.CERT_NONE
    return context


def client_context(config: TLSConfig) -> ssl.SSLContext:
    """For outbound associations: the server is verified (ca_certificates, else the system's),
    and we present our own certificate so that a verifying peer accepts us."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if config.ca_certificates:
        context.load_verify_locations(config.ca_certificates)
    else:
        context.load_default_certs()
    if config.certificate and config.private_key:
        context.load_cert_chain(config.certificate, config.private_key)
    return context
