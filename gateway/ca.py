"""The gateway's certificate authority, for the HTTPS proxy: created once, reused across restarts, and
the on-demand leaf certificates it signs for intercepted hosts.

`ca_dir` holds `ca.pem` (the certificate, to be trusted by clients) and `ca.key` (mode 0600, never
logged or printed). Leaf certificates live only in memory: one key per process, one certificate per
host, cached until shortly before they expire.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"
CA_NAME = "AI gateway proxy CA"
CA_DAYS = 3650
LEAF_DAYS = 365  # under the 398 days Apple's clients accept for TLS server certificates
RENEW_BEFORE = datetime.timedelta(days=1)
# Where distributions keep their trust store when OpenSSL's compiled-in default is not there.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, Alpine, BSDs
)
PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"

log = logging.getLogger("gateway.ca")


class CAError(Exception):
    """The CA cannot be created, read or used; the message says how to fix it."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _private_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file created with mode 0600 (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True, slots=True)
class _Leaf:
    context: ssl.SSLContext
    not_after: datetime.datetime


class CertificateAuthority:
    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._leaves: dict[str, _Leaf] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"CertificateAuthority({str(self.directory)!r})"

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        path = Path(directory)
        cert_path, key_path = path / CERT_FILE, path / KEY_FILE
        if not cert_path.exists() and not key_path.exists():
            raise CAError(f"no CA in {path}: create it with `python -m gateway ca init`")
        if not cert_path.exists() or not key_path.exists():
            present, missing = (key_path, cert_path) if key_path.exists() else (cert_path, key_path)
            raise CAError(
                f"{present} exists but {missing} does not: restore {missing.name}, or remove {present.name} "
                "and run `python -m gateway ca init` (clients must then trust the new CA)"
            )
        try:
            # World access is a mistake; group read is how Kubernetes mounts a Secret for a pod's fsGroup.
            if key_path.stat().st_mode & 0o007:
                log.warning("%s is readable by other users: chmod 600 %s", key_path, key_path)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot read the CA in {path} ({exc}): restore it from a backup") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise CAError(f"{key_path} does not belong to {cert_path}: restore the matching pair")
        if cert.not_valid_after_utc <= _now():
            raise CAError(f"the CA in {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: move it away, run ca init")
        return cls(path, cert, key)

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> tuple[CertificateAuthority, bool]:
        """(the CA, whether it was created now). An existing CA is always kept."""
        path = Path(directory)
        if (path / CERT_FILE).exists() or (path / KEY_FILE).exists():
            return cls.load(path), False
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CAError(f"cannot create {path} ({exc.strerror}): set proxy.ca_dir to a writable directory") from None
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Both files are written under temporary names and linked into place: another process starting
        # at the same moment either finds nothing or a complete pair, never half of one.
        suffix = f".{os.getpid()}.tmp"
        key_tmp, cert_tmp = path / (KEY_FILE + suffix), path / (CERT_FILE + suffix)
        try:
            _private_file(key_tmp, key_pem)
            _private_file(cert_tmp, cert.public_bytes(serialization.Encoding.PEM))
            os.chmod(cert_tmp, 0o644)  # the certificate is public
            try:
                os.link(key_tmp, path / KEY_FILE)
            except FileExistsError:  # someone else created it first: theirs wins
                return cls.load(path), False
            os.replace(cert_tmp, path / CERT_FILE)
        except OSError as exc:
            raise CAError(f"cannot write the CA to {path} ({exc.strerror}): check the directory permissions") from None
        finally:
            key_tmp.unlink(missing_ok=True)
            cert_tmp.unlink(missing_ok=True)
        return cls(path, cert, key), True

    def leaf_certificate(self, host: str) -> x509.Certificate:
        """A fresh server certificate for `host`, signed by this CA."""
        now = _now()
        not_after = min(now + datetime.timedelta(days=LEAF_DAYS), self.cert.not_valid_after_utc)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for `host`; made once per host, renewed a day
        before it expires."""
        host = host.lower()
        with self._lock:
            leaf = self._leaves.get(host)
            if leaf is None or leaf.not_after - _now() < RENEW_BEFORE:
                cert = self.leaf_certificate(host)
                leaf = _Leaf(self._context(cert), cert.not_valid_after_utc)
                self._leaves[host] = leaf
            return leaf.context

    def _context(self, cert: x509.Certificate) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])  # the gateway's server speaks HTTP/1.1
        # The ssl module loads a certificate chain only from files: a private temporary directory,
        # removed at once.
        with tempfile.TemporaryDirectory(prefix="gateway-leaf-") as scratch:
            chain = Path(scratch) / "leaf.pem"
            _private_file(chain, cert.public_bytes(serialization.Encoding.PEM) + self._leaf_key_pem)
            context.load_cert_chain(chain)
        return context


def system_bundle() -> Path | None:
    """The system's trust store as one PEM file: OpenSSL's default (or `SSL_CERT_FILE`), the usual
    distribution paths, then certifi's bundle. Files holding no certificate are passed over."""
    paths = ssl.get_default_verify_paths()
    candidates: list[str | None] = [paths.cafile, paths.openssl_cafile, *SYSTEM_BUNDLES]
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        try:
            if path.is_file() and PEM_BEGIN in path.read_bytes():
                return path
        except OSError:
            continue
    return None


def bundle(ca: CertificateAuthority) -> bytes:
    """The system trust store followed by the gateway CA: for `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`,
    which replace the trust store (a file with only the gateway CA would break every other host)."""
    system = system_bundle()
    if system is None:
        raise CAError(
            "no system trust store found (looked at OpenSSL's default, the usual distribution paths and "
            "certifi): install ca-certificates, or point SSL_CERT_FILE at a bundle"
        )
    text = system.read_bytes()
    gateway_pem = ca.cert_pem
    if gateway_pem.strip() in text:  # a bundle made from an earlier bundle: the CA once, not twice
        return text
    if not text.endswith(b"\n"):
        text += b"\n"
    return text + f"\n# {CA_NAME} ({ca.directory})\n".encode() + gateway_pem


def run_cli(action: str, ca_dir: Path, with_bundle: bool = False) -> int:
    """`python -m gateway ca init | export [--bundle]`."""
    try:
        if action == "init":
            ca, created = CertificateAuthority.load_or_create(ca_dir)
            state = "created" if created else "already exists, kept"
            print(f"CA {state}: {ca_dir / CERT_FILE} (key {ca_dir / KEY_FILE}, mode 0600)", file=sys.stderr)
            print("Trust it: python -m gateway ca export --bundle > gateway-bundle.pem", file=sys.stderr)
            return 0
        ca = CertificateAuthority.load(ca_dir)
        sys.stdout.buffer.write(bundle(ca) if with_bundle else ca.cert_pem)
        sys.stdout.flush()
        return 0
    except CAError as exc:
        print(f"ca: {exc}", file=sys.stderr)
        return 1
