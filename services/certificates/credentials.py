"""Open Badges 3.0 credentials: issuer keys, did:web, the eddsa-rdfc-2022 proof and Bitstring status lists.

Machinery without I/O beyond reading the JSON-LD contexts shipped in ``contexts/``: JSON-LD
processing never touches the network, so a credential signs and verifies the same way offline
and an unknown context is an error instead of a fetch.

Key setting format (``parse_keys`` / ``format_keys``): comma-separated ``<kid>:<seed>`` entries,
``<seed>`` the 32-byte Ed25519 private seed in unpadded base64url, ``<kid>`` made of letters, digits,
``.``, ``_`` and ``-``. Every listed key is published (DID document, JWK set) so credentials signed
by an older key keep verifying; the LAST one signs. Rotate by appending a new key.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pyld import jsonld

VC_CONTEXT_V2: Final = "https://www.w3.org/ns/credentials/v2"
OB_CONTEXT_V3: Final = "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"
CONTEXT_URLS: Final[tuple[str, str]] = (VC_CONTEXT_V2, OB_CONTEXT_V3)
DID_CONTEXTS: Final = ("https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1")

PROOF_TYPE: Final = "DataIntegrityProof"
CRYPTOSUITE: Final = "eddsa-rdfc-2022"
PROOF_PURPOSE: Final = "assertionMethod"

# Multicodec prefix of an Ed25519 public key (0xed, varint-encoded) in a Multikey.
_ED25519_MULTICODEC: Final = b"\xed\x01"
_KID = re.compile(r"^[A-Za-z0-9._-]+$")

STATUS_LIST_SIZE: Final = 131072  # bits: the spec's minimum (16 KiB), for herd privacy


# --- JSON-LD contexts ---------------------------------------------------------------------


@cache
def _shipped_contexts() -> dict[str, dict[str, Any]]:
    """Context URL -> parsed document, read once per process from the package data."""
    folder = resources.files(__package__).joinpath("contexts")
    manifest: dict[str, str] = json.loads(folder.joinpath("contexts.json").read_text(encoding="utf-8"))
    return {url: json.loads(folder.joinpath(name).read_text(encoding="utf-8")) for url, name in manifest.items()}


class UnknownContext(LookupError):
    """A JSON-LD document names a context this service does not ship."""


def document_loader(url: str, options: object = None) -> dict[str, Any]:
    """pyld document loader serving only the shipped contexts (never the network)."""
    try:
        document = _shipped_contexts()[url]
    except KeyError:
        raise UnknownContext(f"context not shipped with the service: {url}") from None
    # pyld keeps what it resolved in its own process-wide cache; a copy keeps ours pristine.
    return {"contextUrl": None, "documentUrl": url, "document": copy.deepcopy(document)}


def _canonize(document: Mapping[str, Any]) -> str:
    """RDFC-1.0 (URDNA2015) canonical N-Quads of a JSON-LD document."""
    canonical: str = jsonld.normalize(
        dict(document),
        {"algorithm": "URDNA2015", "format": "application/n-quads", "documentLoader": document_loader},
    )
    return canonical


# --- keys --------------------------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_multibase(key: Ed25519PublicKey) -> str:
    """Multikey encoding: ``z`` + base58btc(0xed01 + 32-byte key), i.e. ``z6Mk...``."""
    return "z" + base58.b58encode(_ED25519_MULTICODEC + _raw_public(key)).decode("ascii")


def public_key_from_multibase(value: str) -> Ed25519PublicKey:
    if not value.startswith("z"):
        raise ValueError("publicKeyMultibase must be base58btc (prefix 'z')")
    raw = base58.b58decode(value[1:])
    if len(raw) != 34 or not raw.startswith(_ED25519_MULTICODEC):
        raise ValueError("publicKeyMultibase is not an Ed25519 Multikey")
    return Ed25519PublicKey.from_public_bytes(raw[2:])


@dataclass(frozen=True, eq=False)
class SigningKey:
    """One issuer key: its id (the DID URL fragment) and its Ed25519 private key."""

    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if not _KID.fullmatch(self.kid):
            raise ValueError(f"key id {self.kid!r} must be letters, digits, '.', '_' or '-'")

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_multibase(self) -> str:
        return public_multibase(self.public_key)

    def public_jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(_raw_public(self.public_key)),
            "kid": self.kid,
            "alg": "EdDSA",
        }

    def _seed(self) -> bytes:
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def to_setting(self) -> str:
        """``<kid>:<base64url seed>``, one entry of the key setting."""
        return f"{self.kid}:{_b64url(self._seed())}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return self.kid == other.kid and self._seed() == other._seed()

    def __hash__(self) -> int:
        return hash((self.kid, self.public_multibase))


def generate_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or f"key-{secrets.token_hex(4)}", Ed25519PrivateKey.generate())


def parse_keys(value: str) -> list[SigningKey]:
    """Keys of the setting, in order (the last one signs). Errors never echo the secret."""
    keys: list[SigningKey] = []
    for position, entry in enumerate((part.strip() for part in value.split(",")), start=1):
        if not entry:
            continue
        kid, sep, seed_text = entry.partition(":")
        if not sep:
            raise ValueError(f"signing key {position}: expected <kid>:<base64url seed>")
        try:
            seed = _b64url_decode(seed_text.strip())
        except ValueError:
            raise ValueError(f"signing key {kid!r}: seed is not base64url") from None
        if len(seed) != 32:
            raise ValueError(f"signing key {kid!r}: seed must be 32 bytes, got {len(seed)}")
        keys.append(SigningKey(kid.strip(), Ed25519PrivateKey.from_private_bytes(seed)))
    kids = [key.kid for key in keys]
    if len(set(kids)) != len(kids):
        raise ValueError("signing keys: duplicate key id")
    return keys


def format_keys(keys: Iterable[SigningKey]) -> str:
    return ",".join(key.to_setting() for key in keys)


# --- did:web -----------------------------------------------------------------------------


def did_web(public_base_url: str) -> str:
    """``did:web`` of the URL: host, ``%3A``-encoded port, then path segments joined by ``:``."""
    parts = urlsplit(public_base_url)
    if not parts.hostname:
        raise ValueError(f"no host in {public_base_url!r}")
    did = "did:web:" + parts.hostname
    if parts.port is not None:
        did += f"%3A{parts.port}"
    segments = [segment for segment in parts.path.split("/") if segment]
    return ":".join([did, *segments])


def did_document_url(did: str) -> str:
    """Where a did:web resolves: ``/.well-known/did.json`` for a bare host, else ``<path>/did.json``."""
    if not did.startswith("did:web:"):
        raise ValueError(f"not a did:web: {did!r}")
    host, *segments = did.removeprefix("did:web:").split(":")
    path = "/".join(segments) if segments else ".well-known"
    return f"https://{host.replace('%3A', ':')}/{path}/did.json"


def verification_method_id(did: str, key: SigningKey) -> str:
    return f"{did}#{key.kid}"


def did_document(public_base_url: str, keys: Sequence[SigningKey]) -> dict[str, Any]:
    did = did_web(public_base_url)
    methods = [
        {
            "id": verification_method_id(did, key),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": key.public_multibase,
        }
        for key in keys
    ]
    return {
        "@context": list(DID_CONTEXTS),
        "id": did,
        "verificationMethod": methods,
        "assertionMethod": [method["id"] for method in methods],
    }


def jwks(keys: Iterable[SigningKey]) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}


def keys_from_did_document(doc: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Verification method id -> public key, for the methods the DID may assert with."""
    did = doc.get("id")

    def absolute(method_id: str) -> str:
        return f"{did}{method_id}" if method_id.startswith("#") else method_id

    methods = {absolute(m["id"]): m for m in doc.get("verificationMethod", []) if isinstance(m, dict) and "id" in m}
    keys: dict[str, Ed25519PublicKey] = {}
    for reference in doc.get("assertionMethod", []):
        method = reference if isinstance(reference, dict) else methods.get(absolute(str(reference)))
        if method is None or "id" not in method:
            continue
        try:
            if "publicKeyMultibase" in method:
                key = public_key_from_multibase(method["publicKeyMultibase"])
            elif method.get("publicKeyJwk", {}).get("crv") == "Ed25519":
                key = Ed25519PublicKey.from_public_bytes(_b64url_decode(method["publicKeyJwk"]["x"]))
            else:
                continue
        except ValueError:
            continue  # a malformed or foreign key is simply not one of ours
        keys[absolute(method["id"])] = key
    return keys


# --- the credential ----------------------------------------------------------------------


def iso_utc(moment: datetime) -> str:
    """XML Schema dateTime in UTC with ``Z``, to the second (an aware datetime is required)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a timezone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def identity_hash(email: str, salt: str) -> str:
    return "sha256$" + hashlib.sha256((email.lower() + salt).encode("utf-8")).hexdigest()


def build_credential(
    *,
    credential_id: str,
    issuer_id: str,
    issuer_name: str,
    issuer_url: str | None,
    valid_from: datetime,
    valid_until: datetime | None,
    recipient_email: str,
    salt: str,
    achievement_id: str,
    achievement_name: str,
    achievement_description: str,
    criteria_narrative: str,
    status: dict[str, Any] | None,
    name: str | None = None,
) -> dict[str, Any]:
    """An unsigned ``OpenBadgeCredential`` (OB 3.0 on the VC Data Model 2.0)."""
    issuer: dict[str, Any] = {"id": issuer_id, "type": ["Profile"], "name": issuer_name}
    if issuer_url:
        issuer["url"] = issuer_url
    credential: dict[str, Any] = {
        "@context": list(CONTEXT_URLS),
        "id": credential_id,
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "name": name or achievement_name,
        "issuer": issuer,
        "validFrom": iso_utc(valid_from),
    }
    if valid_until is not None:
        credential["validUntil"] = iso_utc(valid_until)
    credential["credentialSubject"] = {
        "type": ["AchievementSubject"],
        "identifier": [
            {
                "type": "IdentityObject",
                "identityHash": identity_hash(recipient_email, salt),
                "identityType": "emailAddress",
                "hashed": True,
                "salt": salt,
            }
        ],
        "achievement": {
            "id": achievement_id,
            "type": ["Achievement"],
            "name": achievement_name,
            "description": achievement_description,
            "criteria": {"narrative": criteria_narrative},
        },
    }
    if status is not None:
        credential["credentialStatus"] = status
    return credential


# --- eddsa-rdfc-2022 ---------------------------------------------------------------------


def _hash_data(unsecured: Mapping[str, Any], proof_config: Mapping[str, Any]) -> bytes:
    """SHA-256(canonical proof config) || SHA-256(canonical document): the 64 bytes signed."""
    proof_hash = hashlib.sha256(_canonize(proof_config).encode("utf-8")).digest()
    document_hash = hashlib.sha256(_canonize(unsecured).encode("utf-8")).digest()
    return proof_hash + document_hash


def sign(document: dict[str, Any], key: SigningKey, verification_method: str, created: datetime) -> dict[str, Any]:
    """A copy of ``document`` with an eddsa-rdfc-2022 ``DataIntegrityProof`` (any earlier proof replaced)."""
    unsecured = {name: value for name, value in document.items() if name != "proof"}
    proof: dict[str, Any] = {
        "type": PROOF_TYPE,
        "cryptosuite": CRYPTOSUITE,
        "created": iso_utc(created),
        "verificationMethod": verification_method,
        "proofPurpose": PROOF_PURPOSE,
    }
    signature = key.private_key.sign(_hash_data(unsecured, {**proof, "@context": unsecured["@context"]}))
    proof["proofValue"] = "z" + base58.b58encode(signature).decode("ascii")
    # A one-proof set: the OB 3.0 AchievementCredential schema requires ``proof`` to be an
    # array (the VC data model allows either form, and verifiers accept both).
    return {**copy.deepcopy(unsecured), "proof": [proof]}


@dataclass(frozen=True)
class ProofCheck:
    valid: bool
    reason: str


def _issuer_id(document: Mapping[str, Any]) -> object:
    issuer = document.get("issuer")
    return issuer.get("id") if isinstance(issuer, Mapping) else issuer


def verify_proof(document: Mapping[str, Any], resolve_key: Callable[[str], Ed25519PublicKey | None]) -> ProofCheck:
    """Check the document's one eddsa-rdfc-2022 proof; never raises for a bad document."""
    proof = document.get("proof")
    # VC 2.0 allows a set of proofs (the OB 3.0 JSON Schema even asks for an array): one is accepted either way.
    if isinstance(proof, list) and len(proof) == 1:
        proof = proof[0]
    if not isinstance(proof, Mapping):
        return ProofCheck(False, "no proof, or more than one")
    if proof.get("type") != PROOF_TYPE:
        return ProofCheck(False, f"proof type is not {PROOF_TYPE}")
    if proof.get("cryptosuite") != CRYPTOSUITE:
        return ProofCheck(False, f"cryptosuite is not {CRYPTOSUITE}")
    if proof.get("proofPurpose") != PROOF_PURPOSE:
        return ProofCheck(False, f"proof purpose is not {PROOF_PURPOSE}")
    method = proof.get("verificationMethod")
    value = proof.get("proofValue")
    if not isinstance(method, str) or not isinstance(value, str) or not value.startswith("z"):
        return ProofCheck(False, "malformed proof")
    if method.split("#", 1)[0] != _issuer_id(document):
        return ProofCheck(False, "verification method is not the issuer's")
    if "@context" in proof and proof["@context"] != document.get("@context"):
        return ProofCheck(False, "proof context differs from the document's")
    key = resolve_key(method)
    if key is None:
        return ProofCheck(False, "unknown verification method")
    try:
        signature = base58.b58decode(value[1:])
    except ValueError:
        return ProofCheck(False, "proof value is not base58btc")
    unsecured = {name: item for name, item in document.items() if name != "proof"}
    config = {name: item for name, item in proof.items() if name != "proofValue"}
    config["@context"] = document.get("@context")
    try:
        data = _hash_data(unsecured, config)
    except (jsonld.JsonLdError, UnknownContext) as error:
        return ProofCheck(False, f"cannot canonicalize: {error}")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return ProofCheck(False, "signature does not match")
    return ProofCheck(True, "ok")


# --- Bitstring Status List v1.0 ----------------------------------------------------------


def encode_status_list(set_indexes: Iterable[int], size: int = STATUS_LIST_SIZE) -> str:
    """``encodedList``: bits MSB-first (index 0 = leftmost bit), GZIP, multibase base64url ``u``."""
    if size <= 0 or size % 8:
        raise ValueError("status list size must be a positive multiple of 8")
    bits = bytearray(size // 8)
    for index in set_indexes:
        if not 0 <= index < size:
            raise ValueError(f"status index {index} outside 0..{size - 1}")
        bits[index // 8] |= 0x80 >> (index % 8)
    # mtime=0: the same statuses always encode to the same text (stable ETags, no churn).
    return "u" + _b64url(gzip.compress(bytes(bits), mtime=0))


def decode_status_list(encoded: str) -> bytes:
    if not encoded.startswith("u"):
        raise ValueError("encodedList must be multibase base64url (prefix 'u')")
    return gzip.decompress(_b64url_decode(encoded[1:]))


def status_bit(bits: bytes, index: int) -> bool:
    if not 0 <= index < len(bits) * 8:
        raise IndexError(f"status index {index} outside the list")
    return bool(bits[index // 8] & (0x80 >> (index % 8)))


def status_entry(list_credential_url: str, index: int) -> dict[str, str]:
    return {
        "id": f"{list_credential_url}#{index}",
        "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation",
        "statusListIndex": str(index),
        "statusListCredential": list_credential_url,
    }


def status_list_credential(*, list_url: str, issuer_id: str, valid_from: datetime, encoded_list: str) -> dict[str, Any]:
    """An unsigned ``BitstringStatusListCredential`` (sign it with ``sign``)."""
    return {
        "@context": [VC_CONTEXT_V2],
        "id": list_url,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": issuer_id,
        "validFrom": iso_utc(valid_from),
        "credentialSubject": {
            "id": f"{list_url}#list",
            "type": "BitstringStatusList",
            "statusPurpose": "revocation",
            "encodedList": encoded_list,
        },
    }
