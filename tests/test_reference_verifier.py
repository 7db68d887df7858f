"""The reference eddsa-rdfc-2022 harness checks itself, before any of our own signing code uses it.

JS signs and JS verifies; a changed field fails; and an independent Python computation of
the proof (pyld's RDFC-1.0 + ``cryptography``'s Ed25519) agrees with the JS one both ways,
so the two stacks implement the same algorithm and either can judge the other.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
from typing import Any

import base58
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pyld import jsonld

from tests import reference_verifier
from tests.reference_verifier import (
    OB_CONTEXT_URL,
    bundled_context,
    ob_context,
    sign_with_reference,
    verify_with_reference,
)

VC_V2 = "https://www.w3.org/ns/credentials/v2"
DID = "did:web:learn.example.org"
KID = "key-2026-01"
SEED = bytes(range(32))
CREATED = "2026-01-15T10:00:00Z"
# Multicodec prefix of an Ed25519 public key (0xed varint-encoded).
ED25519_PUB_PREFIX = b"\xed\x01"


def ob_credential() -> dict[str, Any]:
    """An OpenBadgeCredential of the shape our certificates take (issue 13)."""
    return {
        "@context": [VC_V2, OB_CONTEXT_URL],
        "id": "https://learn.example.org/credentials/7f0c8a1e",
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "issuer": {"id": DID, "type": ["Profile"], "name": "Example Academy"},
        "validFrom": "2026-01-15T09:59:00Z",
        "validUntil": "2028-01-15T09:59:00Z",
        "credentialSubject": {
            "type": ["AchievementSubject"],
            "identifier": [
                {
                    "type": "IdentityObject",
                    "identityHash": "sha256$" + hashlib.sha256(b"learner@example.orgs4lt").hexdigest(),
                    "identityType": "emailAddress",
                    "hashed": True,
                    "salt": "s4lt",
                }
            ],
            "achievement": {
                "id": "https://learn.example.org/courses/42",
                "type": ["Achievement"],
                "name": "Introduction to Stream Processing",
                "description": "Finished every lesson of the course.",
                "criteria": {"narrative": "Complete all lessons."},
            },
        },
        "credentialStatus": {
            "id": "https://learn.example.org/status/1#94567",
            "type": "BitstringStatusListEntry",
            "statusPurpose": "revocation",
            "statusListIndex": "94567",
            "statusListCredential": "https://learn.example.org/status/1",
        },
    }


def contexts() -> dict[str, dict[str, Any]]:
    return {OB_CONTEXT_URL: ob_context()}


def offline_loader(url: str, options: object = None) -> dict[str, Any]:
    """pyld's document loader: the VC 2.0 context from the npm package, OB from the fixture."""
    if url == VC_V2:
        document = bundled_context(VC_V2)
    elif url == OB_CONTEXT_URL:
        document = ob_context()
    else:
        raise ValueError(f"no offline copy of {url}")
    return {"contextUrl": None, "documentUrl": url, "document": document}


def canonical(document: dict[str, Any]) -> bytes:
    nquads: str = jsonld.normalize(
        document, {"algorithm": "URDNA2015", "format": "application/n-quads", "documentLoader": offline_loader}
    )
    return nquads.encode()


def hash_data(credential: dict[str, Any], proof: dict[str, Any]) -> bytes:
    """eddsa-rdfc-2022's hashData, computed without the JS stack."""
    config = {k: v for k, v in proof.items() if k != "proofValue"}
    config["@context"] = credential["@context"]
    unsecured = {k: v for k, v in credential.items() if k != "proof"}
    return hashlib.sha256(canonical(config)).digest() + hashlib.sha256(canonical(unsecured)).digest()


def public_key(did_document: dict[str, Any], method_id: str) -> Ed25519PublicKey:
    (method,) = [m for m in did_document["verificationMethod"] if m["id"] == method_id]
    assert method["type"] == "Multikey"
    multibase: str = method["publicKeyMultibase"]
    assert multibase.startswith("z")
    raw = base58.b58decode(multibase[1:])
    assert raw[:2] == ED25519_PUB_PREFIX
    return Ed25519PublicKey.from_public_bytes(raw[2:])


def test_reference_signs_and_verifies_an_open_badge() -> None:
    signed, did_document = sign_with_reference(ob_credential(), SEED, DID, KID, created=CREATED)
    proof = signed["proof"]
    assert proof["type"] == "DataIntegrityProof"
    assert proof["cryptosuite"] == "eddsa-rdfc-2022"
    assert proof["proofPurpose"] == "assertionMethod"
    assert proof["verificationMethod"] == f"{DID}#{KID}"
    assert proof["created"] == CREATED
    assert proof["proofValue"].startswith("z")
    assert did_document["assertionMethod"] == [f"{DID}#{KID}"]
    assert did_document["verificationMethod"][0]["publicKeyMultibase"].startswith("z6Mk")

    started = time.monotonic()
    assert verify_with_reference(signed, did_document, contexts()) == (True, "")
    # One verification is one Node start; tests may run many of them.
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["credentialSubject"]["achievement"].__setitem__("name", "Advanced Stream Processing"),
        lambda c: c["credentialSubject"]["identifier"][0].__setitem__("salt", "other"),
        lambda c: c.__setitem__("validUntil", "2099-01-15T09:59:00Z"),
        lambda c: c["proof"].__setitem__("created", "2026-01-16T10:00:00Z"),
    ],
    ids=["achievement-name", "salt", "validUntil", "proof-created"],
)
def test_a_field_changed_after_signing_fails(change: Any) -> None:
    signed, did_document = sign_with_reference(ob_credential(), SEED, DID, KID, created=CREATED)
    tampered = copy.deepcopy(signed)
    change(tampered)
    verified, error = verify_with_reference(tampered, did_document, contexts())
    assert not verified
    assert "signature" in error.lower()


def test_another_key_fails() -> None:
    signed, _ = sign_with_reference(ob_credential(), SEED, DID, KID, created=CREATED)
    _, other_did_document = sign_with_reference(ob_credential(), bytes(32), DID, KID, created=CREATED)
    verified, error = verify_with_reference(signed, other_did_document, contexts())
    assert not verified
    assert "signature" in error.lower()


def test_the_verifier_loads_nothing_it_was_not_given() -> None:
    signed, did_document = sign_with_reference(ob_credential(), SEED, DID, KID, created=CREATED)
    verified, error = verify_with_reference(signed, did_document, {})
    assert not verified
    assert f"{OB_CONTEXT_URL} is not available offline" in error

    elsewhere = copy.deepcopy(signed)
    elsewhere["proof"]["verificationMethod"] = f"did:web:elsewhere.example#{KID}"
    verified, error = verify_with_reference(elsewhere, did_document, contexts())
    assert not verified
    assert "not available offline" in error


def test_a_context_differing_from_the_reference_copy_is_refused() -> None:
    signed, did_document = sign_with_reference(ob_credential(), SEED, DID, KID, created=CREATED)
    vc_v2 = bundled_context(VC_V2)
    vc_v2["@context"]["name"] = "https://example.org/not-schema-name"
    with pytest.raises(RuntimeError, match="differs from the copy shipped by the reference packages"):
        verify_with_reference(signed, did_document, {**contexts(), VC_V2: vc_v2})
    # The same document, given by the caller, is accepted.
    assert verify_with_reference(signed, did_document, {**contexts(), VC_V2: bundled_context(VC_V2)}) == (True, "")


def test_python_recomputation_verifies_the_reference_proof() -> None:
    signed, did_document = sign_with_reference(ob_credential(), SEED, DID, KID, created=CREATED)
    proof = signed["proof"]
    signature = base58.b58decode(proof["proofValue"][1:])
    key = public_key(did_document, proof["verificationMethod"])
    key.verify(signature, hash_data(signed, proof))
    # The key the JS side derived from the seed is the one RFC 8032 derives.
    expected = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
    assert key.public_bytes_raw() == expected


def test_reference_verifies_a_proof_computed_in_python() -> None:
    credential = ob_credential()
    proof = {
        "type": "DataIntegrityProof",
        "cryptosuite": "eddsa-rdfc-2022",
        "created": CREATED,
        "verificationMethod": f"{DID}#{KID}",
        "proofPurpose": "assertionMethod",
    }
    signature = Ed25519PrivateKey.from_private_bytes(SEED).sign(hash_data(credential, proof))
    signed = {**credential, "proof": {**proof, "proofValue": "z" + base58.b58encode(signature).decode()}}
    # Ed25519 is deterministic: the same key, document and proof options give the JS proof exactly.
    by_reference, did_document = sign_with_reference(credential, SEED, DID, KID, created=CREATED)
    assert signed["proof"]["proofValue"] == by_reference["proof"]["proofValue"]
    assert verify_with_reference(signed, did_document, contexts()) == (True, "")


def test_missing_node_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="make test"):
        verify_with_reference(ob_credential(), {"id": DID}, contexts())


def test_missing_packages_are_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(reference_verifier, "REFERENCE_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="make test"):
        verify_with_reference(ob_credential(), {"id": DID}, contexts())
