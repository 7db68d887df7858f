"""Every certificate is also a signed Open Badges 3.0 credential: served beside the PDF,
verifiable offline with the issuer's published keys (checked by our verifier and by an
independent implementation), and told apart when tampered with, expired or superseded."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

from services.certificates import credentials
from tests.certificates.support import certificate_stack, completion
from tests.certificates.test_service import wait_for_certificate
from tests.helpers import TestEnv, eventually
from tests.reference_verifier import verify_with_reference

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "ob_v3p0_achievementcredential_schema.json").read_text())
CONTEXTS = {url: credentials.document_loader(url)["document"] for url in credentials.CONTEXT_URLS}


async def test_a_certificate_is_a_signed_credential_anyone_can_verify(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack:
        await stack.publish_completion(completion("cred-1", name="Ada Lovelace"))
        data = await wait_for_certificate(stack, "cred-1")
        code = str(data["verification_code"])
        base = stack.settings.public_base_url
        assert data["credential_url"] == f"{base}/certificates/{code}/credential"
        assert data["expires_at"] is None

        served = await stack.api.get(f"/certificates/{code}/credential")
        assert served.status_code == 200
        assert served.headers["content-type"] == "application/vc+ld+json"
        credential: dict[str, Any] = served.json()
        assert credential["@context"] == list(credentials.CONTEXT_URLS)
        assert credential["type"] == ["VerifiableCredential", "OpenBadgeCredential"]
        assert credential["issuer"]["id"] == credentials.did_web(base)
        assert credential["issuer"]["name"] == stack.settings.platform_name
        achievement = credential["credentialSubject"]["achievement"]
        assert achievement["name"] == "Introduction to Web Development"
        assert achievement["criteria"]["narrative"]
        assert "validUntil" not in credential
        # The learner is a salted hash of their email, never the address.
        [identifier] = credential["credentialSubject"]["identifier"]
        assert "cred-1@example.com" not in json.dumps(credential)
        assert identifier["identityHash"] == "sha256$" + hashlib.sha256(
            ("cred-1@example.com" + identifier["salt"]).encode()
        ).hexdigest()
        status = credential["credentialStatus"]
        assert status["type"] == "BitstringStatusListEntry" and status["statusPurpose"] == "revocation"
        assert status["statusListCredential"].startswith(f"{base}/certificates/status/")
        jsonschema.Draft201909Validator(SCHEMA).validate(credential)

        # The issuer's keys, as a did:web document and as a JWK set.
        did_response = await stack.api.get("/.well-known/did.json")
        assert did_response.status_code == 200
        did_document = did_response.json()
        assert did_document["id"] == credential["issuer"]["id"]
        jwks = (await stack.api.get("/.well-known/jwks.json")).json()
        assert [k["kid"] for k in jwks["keys"]] == [m["id"].split("#")[1] for m in did_document["verificationMethod"]]

        resolve = credentials.keys_from_did_document(did_document).get
        assert credentials.verify_proof(credential, resolve).valid
        assert verify_with_reference(credential, did_document, CONTEXTS) == (True, "")

        # The PDF and the verification page point at the credential.
        page = await stack.api.get(f"/certificates/verify/{code}")
        assert f"/certificates/{code}/credential" in page.text
        verdict = (await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})).json()
        assert verdict["data"]["status"] == "valid" and verdict["data"]["valid"] is True

        # Any change to what it says breaks it, for both verifiers.
        for path, value in ((("credentialSubject", "achievement", "name"), "Advanced Web Development"),
                            (("validFrom",), "2020-01-01T00:00:00Z"),
                            (("issuer", "name"), "Someone Else")):
            forged = copy.deepcopy(credential)
            target = forged
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
            assert not credentials.verify_proof(forged, resolve).valid, path
            assert verify_with_reference(forged, did_document, CONTEXTS)[0] is False, path

        # A stored credential that no longer verifies is reported as such.
        await stack.db.execute(
            "UPDATE certificate_files SET credential = jsonb_set(credential, '{name}', '\"Forged\"') "
            "WHERE certificate_id = $1", data["certificate_id"],
        )
        tampered = (await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})).json()
        assert tampered["data"]["status"] == "invalid" and tampered["data"]["valid"] is False
        assert "signature" in tampered["data"]["proof_error"]


async def test_a_course_with_a_validity_period_gives_credentials_that_expire(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack:
        await stack.publish_completion(completion("cred-2", validity_days=30))
        data = await wait_for_certificate(stack, "cred-2")
        code = str(data["verification_code"])
        credential = (await stack.api.get(f"/certificates/{code}/credential")).json()
        issued = datetime.fromisoformat(credential["validFrom"].replace("Z", "+00:00"))
        until = datetime.fromisoformat(credential["validUntil"].replace("Z", "+00:00"))
        assert (until - issued).days == 30
        assert data["expires_at"] is not None
        verdict = (await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})).json()
        assert verdict["data"]["status"] == "valid"

        # Past its validity (moved into the past here rather than waited for), it is expired.
        await stack.db.execute(
            "UPDATE certificates SET valid_until = now() - interval '1 day' WHERE certificate_id = $1",
            data["certificate_id"],
        )

        async def expired() -> bool:
            r = await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})
            return bool(r.json()["data"]["status"] == "expired")

        await eventually(expired, what="expired verdict")
        page = await stack.api.get(f"/certificates/verify/{code}")
        assert "expired" in page.text
