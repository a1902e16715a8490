"""The per-cluster CA and the node certificates for mutual TLS on replication.

One UnisonCluster has one CA; each part (a datacenter, the relayer) has one certificate,
valid for the Service DNS names the others dial it by and usable both to serve and, as
a client certificate, to follow. `ensure` keeps whatever is still good, so reconciling
again writes the same bytes (no Secret change, no pod restart); it issues only what is
missing, no longer matches its names or the CA, or expires within RENEW_BEFORE.

Secret layout (one flat mapping, file name -> PEM): `ca.crt`, `ca.key`, and
`<part>.crt`, `<part>.key` per part. Pods mount only their own files and `ca.crt`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .render import SECRET_CA_CERT as CA_CERT
from .render import SECRET_CA_KEY as CA_KEY
from .render import secret_cert as cert_file
from .render import secret_key as key_file

log = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=3650)
NODE_VALIDITY = datetime.timedelta(days=365)
# Renewed this long before expiry (the operator compares every resync_interval).
RENEW_BEFORE = datetime.timedelta(days=30)
# Certificates start a little in the past so a node whose clock lags accepts them.
BACKDATE = datetime.timedelta(minutes=5)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime.datetime, validity: datetime.timedelta) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False))


def new_ca(cluster: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    """(certificate, key) PEM of a fresh CA that signs node certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = f"unison {cluster} CA"
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(name, issuer, key.public_key(), now, CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(ca_cert: bytes, ca_key: bytes, common_name: str, dns_names: Sequence[str],
          now: datetime.datetime) -> tuple[bytes, bytes]:
    """(certificate, key) PEM for a node: server and client auth, for `dns_names`."""
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(common_name, ca.subject, key.public_key(), now, NODE_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _load(pem: bytes | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def _key_matches(cert: x509.Certificate, key_pem: bytes | None) -> bool:
    if not key_pem:
        return False
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def _fresh(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now + BACKDATE and \
        cert.not_valid_after_utc - now > RENEW_BEFORE


def ca_usable(data: Mapping[str, bytes], now: datetime.datetime) -> bool:
    """The CA in `data` is a CA, has its key and is not about to expire."""
    ca = _load(data.get(CA_CERT))
    if ca is None or not _key_matches(ca, data.get(CA_KEY)) or not _fresh(ca, now):
        return False
    try:
        return bool(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def node_usable(data: Mapping[str, bytes], part: str, dns_names: Sequence[str],
                now: datetime.datetime) -> bool:
    """The part's certificate is signed by the CA in `data`, has its key, names exactly
    `dns_names` and is not about to expire."""
    cert, ca = _load(data.get(cert_file(part))), _load(data.get(CA_CERT))
    if cert is None or ca is None or not _key_matches(cert, data.get(key_file(part))):
        return False
    try:
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return _fresh(cert, now) and sorted(names.get_values_for_type(x509.DNSName)) == \
        sorted(dns_names)


def ensure(existing: Mapping[str, bytes], cluster: str, parts: Mapping[str, Sequence[str]],
           now: datetime.datetime) -> dict[str, bytes]:
    """The Secret data for `parts` (part -> DNS names): what in `existing` is still good,
    plus a new CA (and so new node certificates) or new node certificates where needed.
    Files of parts no longer in `parts` are dropped."""
    data: dict[str, bytes] = {}
    if ca_usable(existing, now):
        data[CA_CERT], data[CA_KEY] = existing[CA_CERT], existing[CA_KEY]
        reuse = existing
    else:
        log.info("TLS: new CA for UnisonCluster %s", cluster)
        data[CA_CERT], data[CA_KEY] = new_ca(cluster, now)
        reuse = {}
    for part, names in sorted(parts.items()):
        if reuse and node_usable(reuse, part, names, now):
            data[cert_file(part)], data[key_file(part)] = (reuse[cert_file(part)],
                                                           reuse[key_file(part)])
            continue
        log.info("TLS: new certificate for %s of UnisonCluster %s", part, cluster)
        data[cert_file(part)], data[key_file(part)] = issue(
            data[CA_CERT], data[CA_KEY], f"{cluster}-{part}", names, now)
    return data
