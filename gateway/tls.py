"""TLS for Keystile's listeners (gateway and admin): TLS 1.2 and 1.3 only, ECDHE with AEAD
ciphers only, and a certificate that SIGHUP replaces without dropping a connection.

Reloading never touches the context a listener was started with in place: a failed
``load_cert_chain`` into a live context can leave it with the new certificate and no key, and
every later handshake would fail. A reload builds a whole new context instead; if the files
are bad it is dropped, with a log line, and the previous one stays. The listening context
hands each handshake to the current one from its server-name callback, which OpenSSL calls
for every ClientHello (with or without SNI); established connections keep the context they
were made with."""

from __future__ import annotations

import datetime
import logging
import ssl

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

# TLS 1.2 suites: forward secrecy (ECDHE) and authenticated encryption (AES-GCM, ChaCha20)
# only; TLS 1.3 has nothing else. With an RSA or an ECDSA certificate alike.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class CertificateError(Exception):
    """A certificate and key that cannot be served; the message says what to fix."""


def _no_password() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise CertificateError("the private key is encrypted; give it unencrypted")


def _check(cert_file: str, key_file: str) -> None:
    """Names the file at fault, which OpenSSL's "PEM lib" errors do not."""
    try:
        with open(cert_file, "rb") as f:
            x509.load_pem_x509_certificates(f.read())
    except OSError as exc:
        raise CertificateError(f"cannot read {cert_file}: {exc.strerror or exc}") from None
    except ValueError:
        raise CertificateError(f"{cert_file} holds no PEM certificate") from None
    try:
        with open(key_file, "rb") as f:
            serialization.load_pem_private_key(f.read(), password=None)
    except OSError as exc:
        raise CertificateError(f"cannot read {key_file}: {exc.strerror or exc}") from None
    except TypeError:  # "password was not given but private key is encrypted"
        raise CertificateError(f"{key_file} holds an encrypted private key; give it "
                               "unencrypted (readable by the keystile user only)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{key_file} holds no PEM private key") from None


def load_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """``context.load_cert_chain`` with its failures turned into one CertificateError."""
    _check(cert_file, key_file)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except CertificateError:
        raise
    except ssl.SSLError as exc:
        detail = ("the key does not belong to the certificate (the first one in the file: "
                  "the chain starts with the server's own)"
                  if exc.reason == "KEY_VALUES_MISMATCH" else str(exc.reason or exc))
        raise CertificateError(f"cannot load {cert_file} with {key_file}: {detail}"
                               ) from None
    except OSError as exc:  # replaced between the check and the load
        raise CertificateError(f"cannot read {exc.filename or cert_file}: "
                               f"{exc.strerror or exc}") from None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A listener's context presenting ``cert_file`` (the chain, leaf first) and ``key_file``.
    Raises CertificateError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    # Compression (CRIME) and client-initiated renegotiation (a cheap CPU drain) are off.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # What the listeners speak: a client that would rather have h2 knows to fall back.
    context.set_alpn_protocols(["http/1.1"])
    load_pair(context, cert_file, key_file)
    return context


def describe(cert_file: str) -> str:
    """The leaf certificate's subject, serial and expiry, for log lines."""
    try:
        with open(cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return cert_file
    expires = cert.not_valid_after_utc
    expired = " (EXPIRED)" if expires < datetime.datetime.now(datetime.UTC) else ""
    return (f"{cert_file}: {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}, "
            f"valid until {expires:%Y-%m-%d %H:%M} UTC{expired}")


class ServerTLS:
    """One listener's TLS: ``context`` to listen with, serving the certificate last loaded."""

    def __init__(self, name: str, cert_file: str, key_file: str) -> None:
        self.name = name
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = server_context(cert_file, key_file)
        self._current = self.context
        self.context.sni_callback = self._select
        log.info("%s serves TLS with %s", name, describe(cert_file))

    def _select(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        if self._current is not context:
            conn.context = self._current

    def reload(self) -> bool:
        """Reads the certificate and key files again: later handshakes present them. If they
        cannot be loaded the previous certificate stays, and the log says why."""
        try:
            fresh = server_context(self.cert_file, self.key_file)
        except CertificateError as exc:
            log.error("%s TLS certificate NOT reloaded, still serving the previous one: %s",
                      self.name, exc)
            return False
        self._current = fresh
        log.info("%s TLS certificate reloaded from %s", self.name, describe(self.cert_file))
        return True
