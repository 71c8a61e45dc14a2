"""Certificates for the HTTPS health server and the HTTPS peer checks.

Two jobs, both on the ``cryptography`` library:

* **Loading production certificates.** :meth:`TLSCertificate.from_files` and
  :meth:`TLSCertificate.from_pem` check up front what would otherwise fail
  later and obscurely inside granian or an SSL handshake: that the PEM parses,
  that the key belongs to the certificate and that the certificate is valid
  now. :func:`load_ca_pem` checks the CA bundle a node uses to verify its
  peers. Every failure is a :class:`~fastelect.errors.TLSError` (a
  ``ValueError``) whose message names the file or field at fault.
* **A development CA** for tests, the demo and the CLI:
  :meth:`CertificateAuthority.create` makes a throwaway root and
  :meth:`CertificateAuthority.issue` signs server certificates for node names
  and IP addresses. It is not meant to run a production PKI: no revocation,
  no name constraints, keys held in memory.

:func:`server_ssl_context` and :func:`client_ssl_context` turn these into
stdlib :class:`ssl.SSLContext` objects (TLS 1.2 minimum); the client context
trusts only the given CA and checks the peer's DNS name or IP address.
granian needs certificate and key *files*, which
:meth:`TLSCertificate.write_private` writes with mode 0600.

Certificate validity is checked against this host's wall clock when a
certificate is loaded, and again by every TLS handshake, so TLS (unlike the
election itself) does assume roughly synchronized clocks; issued
certificates are backdated by :data:`CLOCK_SKEW_ALLOWANCE` to absorb skew.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import TLSError

__all__ = [
    "CLOCK_SKEW_ALLOWANCE",
    "CertificateAuthority",
    "TLSCertificate",
    "client_ssl_context",
    "load_ca_pem",
    "server_ssl_context",
]

#: How far before "now" issued certificates start to be valid, so a host whose
#: clock runs a little behind the issuer's accepts them at once.
CLOCK_SKEW_ALLOWANCE = dt.timedelta(hours=1)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Keys a TLS endpoint can sign handshakes with (OpenSSL takes them all).
_TLS_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_PEM = serialization.Encoding.PEM


# --------------------------------------------------------------------------- #
# Parsing and checking helpers (all raise TLSError with a labelled message).
# --------------------------------------------------------------------------- #


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return value


def _parse_certs(data: bytes, label: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSError(f"{label}: not a PEM certificate ({exc})") from exc


def _parse_key(data: bytes, label: str) -> Any:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's signal for "encrypted, no password"
        raise TLSError(f"{label}: private key is encrypted; an unencrypted key is needed") from exc
    except ValueError as exc:
        raise TLSError(f"{label}: not a PEM private key ({exc})") from exc
    except UnsupportedAlgorithm as exc:
        raise TLSError(f"{label}: unsupported private key ({exc})") from exc
    if not isinstance(key, _TLS_KEY_TYPES):
        raise TLSError(
            f"{label}: unsupported key type {type(key).__name__} (use RSA, EC or Ed25519/Ed448)"
        )
    return key


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _common_name(cert: x509.Certificate) -> str | None:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


def _check_key_matches(cert: x509.Certificate, key: Any, cert_label: str, key_label: str) -> None:
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise TLSError(
            f"key does not match certificate: {key_label} is not the key of "
            f"{cert_label} ({_describe(cert)})"
        )


def _check_validity(cert: x509.Certificate, label: str) -> None:
    now = dt.datetime.now(dt.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    window = f"valid from {_utc(start)} until {_utc(end)}, now {_utc(now)}"
    if now > end:
        raise TLSError(f"{label} ({_describe(cert)}) has expired: {window}")
    if now < start:
        raise TLSError(f"{label} ({_describe(cert)}) is not yet valid: {window}")


def _load_pair(
    cert_pem: bytes, key_pem: bytes, cert_label: str, key_label: str
) -> tuple[list[x509.Certificate], Any]:
    """Parse and cross-check a certificate chain and its leaf's private key."""
    certs = _parse_certs(cert_pem, cert_label)
    key = _parse_key(key_pem, key_label)
    _check_key_matches(certs[0], key, cert_label, key_label)
    for index, cert in enumerate(certs):
        _check_validity(cert, cert_label if index == 0 else f"{cert_label} chain[{index}]")
    return certs, key


def _read(path: str | os.PathLike[str], label: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise TLSError(f"{label} not found: {os.fspath(path)}") from exc
    except OSError as exc:
        raise TLSError(f"cannot read {label} {os.fspath(path)}: {exc.strerror or exc}") from exc


def _write_private_file(path: Path, data: bytes) -> None:
    # A fresh temporary file created 0600 and renamed over ``path``: the mode
    # holds from the first byte even if ``path`` already existed with a looser
    # one, readers never see a half-written file, and O_EXCL never follows a
    # planted symlink.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _trust(context: ssl.SSLContext, ca_pem: bytes) -> None:
    cadata = load_ca_pem(ca_pem).decode("ascii")
    try:
        context.load_verify_locations(cadata=cadata)
    except ssl.SSLError as exc:
        raise TLSError(f"CA bundle: OpenSSL refused it: {exc}") from exc


def _load_cert_chain(context: ssl.SSLContext, cert: TLSCertificate) -> None:
    # The stdlib loads certificates and keys only from files: write them to a
    # private (0700) temporary directory, load, and delete at once.
    with tempfile.TemporaryDirectory(prefix="fastelect-tls-") as directory:
        cert_path, key_path = cert.write_private(directory)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise TLSError(f"OpenSSL refused the certificate or key: {exc}") from exc


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, repr=False)
class TLSCertificate:
    """A validated certificate chain and its private key, both PEM.

    Constructing one (directly or through :meth:`from_pem` /
    :meth:`from_files`) checks that both parse, that the key belongs to the
    leaf and that every certificate is valid now; otherwise it raises
    :class:`~fastelect.errors.TLSError`. The repr never shows the key.
    """

    cert_pem: bytes
    """The leaf certificate first, then any intermediates, PEM."""
    key_pem: bytes
    """The leaf's unencrypted private key, PEM (PKCS#8, SEC1 or PKCS#1)."""
    _leaf: x509.Certificate = field(init=False, compare=False)

    def __post_init__(self) -> None:
        _require_bytes(self.cert_pem, "cert_pem")
        _require_bytes(self.key_pem, "key_pem")
        certs, _ = _load_pair(self.cert_pem, self.key_pem, "certificate", "private key")
        object.__setattr__(self, "_leaf", certs[0])

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> TLSCertificate:
        """Validate and wrap a PEM certificate chain and its PEM private key."""
        return cls(cert_pem, key_pem)

    @classmethod
    def from_files(
        cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
    ) -> TLSCertificate:
        """Load and validate a PEM certificate (chain) file and its key file.

        Error messages name the file at fault.
        """
        cert_label = f"certificate file {os.fspath(cert_path)}"
        key_label = f"private key file {os.fspath(key_path)}"
        cert_pem = _read(cert_path, "certificate file")
        key_pem = _read(key_path, "private key file")
        _load_pair(cert_pem, key_pem, cert_label, key_label)  # errors that name the files
        return cls(cert_pem, key_pem)

    @property
    def not_valid_before(self) -> dt.datetime:
        """When the leaf certificate starts to be valid (aware, UTC)."""
        return self._leaf.not_valid_before_utc

    @property
    def not_valid_after(self) -> dt.datetime:
        """When the leaf certificate expires (aware, UTC)."""
        return self._leaf.not_valid_after_utc

    @property
    def subject_alt_names(self) -> tuple[str, ...]:
        """The leaf's DNS names and IP addresses (as strings), in certificate order.

        Other SAN kinds (URIs, e-mail addresses) are left out.
        """
        try:
            san = self._leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return ()
        names: list[str] = []
        for name in san.value:
            if isinstance(name, x509.DNSName):
                names.append(name.value)
            elif isinstance(name, x509.IPAddress):
                names.append(str(name.value))
        return tuple(names)

    @property
    def common_name(self) -> str | None:
        """The leaf subject's common name, or ``None`` if it has none."""
        return _common_name(self._leaf)

    def write_private(
        self, directory: str | os.PathLike[str], *, name: str = "fastelect"
    ) -> tuple[Path, Path]:
        """Write ``<name>-cert.pem`` and ``<name>-key.pem`` into ``directory``.

        Both files are created with mode 0600 (never loosened, then tightened)
        and replace any existing files atomically; ``directory`` is created
        with mode 0700 if missing. Returns ``(cert_path, key_path)``, e.g. for
        granian's ``ssl_cert``/``ssl_key``.
        """
        if not name or os.sep in name or (os.altsep and os.altsep in name) or name in {".", ".."}:
            raise ValueError(f"name must be a plain file name prefix, not {name!r}")
        target = Path(directory)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path, key_path = target / f"{name}-cert.pem", target / f"{name}-key.pem"
        _write_private_file(cert_path, self.cert_pem)
        _write_private_file(key_path, self.key_pem)
        return cert_path, key_path

    def __repr__(self) -> str:
        return (
            f"TLSCertificate(common_name={self.common_name!r}, "
            f"subject_alt_names={self.subject_alt_names!r}, "
            f"not_valid_after={_utc(self.not_valid_after)!r})"
        )

    def __reduce__(self) -> tuple[type[TLSCertificate], tuple[bytes, bytes]]:
        # Pickle/copy as the two PEM blobs; unpickling validates again.
        return (type(self), (self.cert_pem, self.key_pem))


@dataclass(frozen=True, repr=False)
class CertificateAuthority:
    """A self-signed root that issues certificates: for tests, the demo and the CLI.

    Constructing one checks that ``cert_pem`` holds exactly one CA certificate
    (basicConstraints CA=true), that ``key_pem`` is its key and that it is
    valid now. Nodes trust it through ``client_ssl_context(ca.cert_pem)``.
    """

    cert_pem: bytes
    """The CA certificate, PEM (share this with every node)."""
    key_pem: bytes
    """The CA's unencrypted private key, PEM (keep this secret)."""
    _cert: x509.Certificate = field(init=False, compare=False)
    _key: Any = field(init=False, compare=False)

    def __post_init__(self) -> None:
        _require_bytes(self.cert_pem, "cert_pem")
        _require_bytes(self.key_pem, "key_pem")
        certs, key = _load_pair(self.cert_pem, self.key_pem, "CA certificate", "CA private key")
        if len(certs) != 1:
            raise TLSError(f"CA certificate: expected exactly 1 certificate, found {len(certs)}")
        try:
            is_ca = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise TLSError(
                f"CA certificate ({_describe(certs[0])}) is not a CA: "
                "basicConstraints CA=true is missing"
            )
        object.__setattr__(self, "_cert", certs[0])
        object.__setattr__(self, "_key", key)

    @classmethod
    def create(
        cls, common_name: str = "fastelect development CA", valid_days: int = 365
    ) -> CertificateAuthority:
        """Make a new self-signed CA valid for ``valid_days`` days from now."""
        _check_common_name(common_name)
        _check_days(valid_days)
        # EC P-256: a key is generated in microseconds (RSA-2048 takes tens to
        # hundreds of milliseconds), so tests and the demo can mint CAs and
        # certificates freely; it gives ~128-bit security (like RSA-3072) with
        # small certificates and fast handshakes, and every TLS stack we meet
        # (OpenSSL, rustls in granian, curl, browsers) supports ECDSA P-256.
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(_PEM), _private_pem(key))

    @property
    def common_name(self) -> str | None:
        """The CA's common name, or ``None`` if it has none."""
        return _common_name(self._cert)

    @property
    def not_valid_after(self) -> dt.datetime:
        """When the CA certificate expires (aware, UTC)."""
        return self._cert.not_valid_after_utc

    def issue(
        self,
        *,
        common_name: str,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str | _IPAddress] = (),
        valid_days: int = 90,
        client: bool = False,
    ) -> TLSCertificate:
        """Sign a new server certificate (fresh EC P-256 key) for these names.

        The certificate carries the serverAuth extended key usage, plus
        clientAuth when ``client`` is true (for mutual TLS), and a
        subjectAltName with every DNS name and IP address; at least one is
        required, since TLS clients ignore the common name. It is valid from
        :data:`CLOCK_SKEW_ALLOWANCE` ago for ``valid_days`` days, but never
        past the CA's own expiry.

        The result holds the leaf only, not the CA: the CA is the trust
        anchor every verifying peer must already have, so sending it in each
        handshake would be redundant (RFC 8446 §4.4.2 lets it be omitted).
        """
        _check_common_name(common_name)
        _check_days(valid_days)
        sans = _san_entries(dns_names, ip_addresses)
        key = ec.generate_private_key(ec.SECP256R1())  # P-256: see create()
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + dt.timedelta(days=valid_days), self._cert.not_valid_after_utc)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        try:
            ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:  # an imported CA without one
            ca_ski = x509.SubjectKeyIdentifier.from_public_key(self._cert.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,  # RSA key transport only; ECDSA signs
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(self._key, _signing_hash(self._key))
        )
        return TLSCertificate(cert.public_bytes(_PEM), _private_pem(key))

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(common_name={self.common_name!r}, "
            f"not_valid_after={_utc(self.not_valid_after)!r})"
        )

    def __reduce__(self) -> tuple[type[CertificateAuthority], tuple[bytes, bytes]]:
        # Pickle/copy as the two PEM blobs; unpickling validates again.
        return (type(self), (self.cert_pem, self.key_pem))


def load_ca_pem(data: bytes) -> bytes:
    """Validate a PEM CA bundle (one or more certificates) and return it cleaned.

    The result holds only the certificates, re-encoded as plain PEM (text
    between blocks, such as ``openssl x509 -text`` output, is dropped).
    Raises :class:`~fastelect.errors.TLSError` if no certificate parses.
    """
    certs = _parse_certs(_require_bytes(data, "data"), "CA bundle")
    return b"".join(cert.public_bytes(_PEM) for cert in certs)


def server_ssl_context(
    cert: TLSCertificate, *, client_ca_pem: bytes | None = None
) -> ssl.SSLContext:
    """A server-side SSL context presenting ``cert``, TLS 1.2 minimum.

    With ``client_ca_pem``, clients must present a certificate issued by that
    CA (mutual TLS); without it, client certificates are not requested.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert_chain(context, cert)
    if client_ca_pem is not None:
        _trust(context, client_ca_pem)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(
    ca_pem: bytes, *, client_cert: TLSCertificate | None = None
) -> ssl.SSLContext:
    """A client-side SSL context that trusts only ``ca_pem``, TLS 1.2 minimum.

    The system trust store is not loaded. The server's certificate must chain
    to this CA and name the host connected to: a DNS name, or an IP address
    when connecting by IP (``server_hostname`` defaults to the host given).
    ``client_cert`` is presented when the server asks for one (mutual TLS).
    Raises :class:`~fastelect.errors.TLSError` if ``ca_pem`` is not a PEM CA
    bundle.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _trust(context, ca_pem)
    if client_cert is not None:
        _load_cert_chain(context, client_cert)
    return context


# --------------------------------------------------------------------------- #
# Issuing helpers
# --------------------------------------------------------------------------- #


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _signing_hash(key: Any) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign the message itself; every other key signs a SHA-256.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _check_common_name(common_name: str) -> None:
    if not isinstance(common_name, str) or not 1 <= len(common_name) <= 64:
        raise TLSError(f"common_name must be a string of 1 to 64 characters, got {common_name!r}")


def _check_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days <= 0:
        raise TLSError(f"valid_days must be a positive integer, got {valid_days!r}")


def _san_entries(
    dns_names: Iterable[str], ip_addresses: Iterable[str | _IPAddress]
) -> list[x509.GeneralName]:
    if isinstance(dns_names, str | bytes):
        raise TypeError("dns_names must be a sequence of names, not a single string")
    if isinstance(ip_addresses, str | bytes):
        raise TypeError("ip_addresses must be a sequence of addresses, not a single string")
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(dns_names):
        if not isinstance(name, str) or not name or not name.isascii() or " " in name:
            raise TLSError(f"dns_names: {name!r} is not an ASCII DNS name (use IDNA A-labels)")
        if _is_ip_literal(name):
            # Clients match IP literals against IP SANs only: a DNS SAN would never match.
            raise TLSError(f"dns_names: {name!r} is an IP address; pass it in ip_addresses")
        entries.append(x509.DNSName(name))
    for address in dict.fromkeys(ip_addresses):
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError as exc:
            raise TLSError(f"ip_addresses: {address!r} is not an IP address") from exc
        entries.append(x509.IPAddress(parsed))
    if not entries:
        raise TLSError(
            "a certificate needs at least one DNS name or IP address "
            "(TLS clients ignore the common name)"
        )
    return entries


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
