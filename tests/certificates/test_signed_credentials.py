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
from shared.events import CertificateRevoked, Topic
from tests.certificates.support import certificate_stack, completion
from tests.certificates.test_service import pdf_text, wait_for_certificate
from tests.helpers import TestEnv, TopicReader, eventually
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
        pdf = await stack.api.get(f"/certificates/{code}.pdf")
        assert f"/certificates/{code}/credential" in pdf_text(pdf.content).replace("\n", "")
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


async def test_an_admin_revokes_and_reinstates_through_the_signed_status_list(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.CERTIFICATE_REVOKED.value)
    ) as reader:
        await stack.publish_completion(completion("cred-3"))
        data = await wait_for_certificate(stack, "cred-3")
        code, certificate_id = str(data["verification_code"]), str(data["certificate_id"])
        credential = (await stack.api.get(f"/certificates/{code}/credential")).json()
        entry = credential["credentialStatus"]
        list_path = entry["statusListCredential"].removeprefix(stack.settings.public_base_url)
        did_document = (await stack.api.get("/.well-known/did.json")).json()
        resolve = credentials.keys_from_did_document(did_document).get
        admin = stack.token("admin-1", roles=["admin"])

        async def revoked_on_the_list() -> bool:
            served = await stack.api.get(list_path)
            assert served.status_code == 200 and served.headers["content-type"] == "application/vc+ld+json"
            assert "max-age" in served.headers["cache-control"]
            status_list = served.json()
            assert credentials.verify_proof(status_list, resolve).valid  # the list itself is signed
            assert verify_with_reference(status_list, did_document, CONTEXTS) == (True, "")
            bits = credentials.decode_status_list(status_list["credentialSubject"]["encodedList"])
            assert len(bits) * 8 >= 131_072
            return credentials.status_bit(bits, int(entry["statusListIndex"]))

        assert await revoked_on_the_list() is False
        learner = await stack.api.post(f"/api/admin/certificates/{certificate_id}/revoke",
                                       headers=stack.token("cred-3"), json={"reason": "mine"})
        assert learner.status_code == 403
        missing = await stack.api.post("/api/admin/certificates/CERT-1999-001/revoke", headers=admin,
                                       json={"reason": "x"})
        assert missing.status_code == 404 and missing.json()["code"] == "certificate_not_found"
        no_reason = await stack.api.post(f"/api/admin/certificates/{certificate_id}/revoke", headers=admin, json={})
        assert no_reason.status_code == 400

        revoked = await stack.api.post(f"/api/admin/certificates/{certificate_id}/revoke", headers=admin,
                                       json={"reason": "Academic misconduct"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["data"]["status"] == "revoked"
        again = await stack.api.post(f"/api/admin/certificates/{certificate_id}/revoke", headers=admin,
                                     json={"reason": "twice"})
        assert again.status_code == 409 and again.json()["code"] == "status_unchanged"
        assert await revoked_on_the_list() is True
        verdict = (await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})).json()
        assert verdict["data"]["status"] == "revoked" and verdict["data"]["valid"] is False
        assert verdict["data"]["revocation_reason"] == "Academic misconduct" and verdict["data"]["revoked_at"]
        page = await stack.api.get(f"/certificates/verify/{code}")
        assert "revoked" in page.text and "Academic misconduct" in page.text

        reinstated = await stack.api.post(f"/api/admin/certificates/{certificate_id}/reinstate", headers=admin,
                                          json={"reason": "Appeal upheld"})
        assert reinstated.status_code == 200 and reinstated.json()["data"]["status"] == "valid"
        assert await revoked_on_the_list() is False
        verdict = (await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})).json()
        assert verdict["data"]["status"] == "valid"

        async def both_changes_published() -> list[CertificateRevoked] | None:
            events = [CertificateRevoked.model_validate_json(m.value) for m in reader.messages]
            return events if len({e.event_id for e in events}) >= 2 else None

        events = await eventually(both_changes_published, what="certificate-revoked events")
        assert [(e.certificate_id, e.status, e.reason) for e in events[:2]] == [
            (certificate_id, "revoked", "Academic misconduct"), (certificate_id, "reinstated", "Appeal upheld"),
        ]


async def test_a_certificate_without_a_credential_is_still_told_revoked(test_env: TestEnv) -> None:
    """A certificate issued before credentials existed has no proof to check; revoking it
    must still show on its verification, as for one with a credential."""
    async with certificate_stack(test_env) as stack:
        await stack.publish_completion(completion("cred-old"))
        data = await wait_for_certificate(stack, "cred-old")
        code, certificate_id = str(data["verification_code"]), str(data["certificate_id"])
        await stack.db.execute("UPDATE certificate_files SET credential = NULL WHERE certificate_id = $1",
                                 certificate_id)
        assert (await stack.api.get(f"/certificates/{code}/credential")).status_code == 404

        async def verdict() -> Any:
            answer = await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})
            assert answer.status_code == 200
            return answer.json()["data"]

        assert (await verdict())["status"] == "valid"
        admin = stack.token("admin-1", roles=["admin"])
        revoked = await stack.api.post(f"/api/admin/certificates/{certificate_id}/revoke", headers=admin,
                                       json={"reason": "Issued in error"})
        assert revoked.status_code == 200, revoked.text
        told = await verdict()
        assert told["status"] == "revoked" and told["valid"] is False
        assert told["revocation_reason"] == "Issued in error"


async def test_regeneration_issues_a_new_credential_and_supersedes_the_old_one(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack:
        await stack.publish_completion(completion("cred-4"))
        data = await wait_for_certificate(stack, "cred-4")
        code = str(data["verification_code"])
        first = (await stack.api.get(f"/certificates/{code}/credential")).json()
        admin = stack.token("admin-1", roles=["admin"])
        queued = await stack.api.post("/api/admin/courses/10/certificates/regenerate", headers=admin)
        assert queued.status_code == 202

        async def second_version() -> dict[str, Any] | None:
            r = await stack.api.get(f"/certificates/{code}/credential")
            return r.json() if r.headers.get("x-certificate-version") == "2" else None

        second = await eventually(second_version, timeout=60, what="the regenerated credential")
        assert second["id"] != first["id"]
        assert second["credentialStatus"] == first["credentialStatus"]  # one revocation entry per certificate
        older = await stack.api.get(f"/certificates/{code}/credential", params={"version": 1})
        assert older.json() == first
        did_document = (await stack.api.get("/.well-known/did.json")).json()
        resolve = credentials.keys_from_did_document(did_document).get
        assert credentials.verify_proof(first, resolve).valid and credentials.verify_proof(second, resolve).valid

        def verdict(version: int | None) -> Any:
            params = {"version": version} if version else {}
            return stack.api.get(f"/certificates/verify/{code}", params=params, headers={"Accept": "application/json"})

        assert (await verdict(None)).json()["data"]["status"] == "valid"
        old = (await verdict(1)).json()["data"]
        assert old["status"] == "superseded" and old["credential_version"] == 1
        assert (await verdict(3)).status_code == 404


async def test_a_rotated_key_signs_new_credentials_and_the_old_ones_still_verify(test_env: TestEnv) -> None:
    old_key, new_key = credentials.generate_key("2026-a"), credentials.generate_key("2027-a")
    async with certificate_stack(test_env, signing_keys=credentials.format_keys([old_key])) as stack:
        await stack.publish_completion(completion("rot-1"))
        first_code = str((await wait_for_certificate(stack, "rot-1"))["verification_code"])
        first = (await stack.api.get(f"/certificates/{first_code}/credential")).json()
    rotated = credentials.format_keys([old_key, new_key])
    async with certificate_stack(test_env, signing_keys=rotated) as stack:
        await stack.publish_completion(completion("rot-2"))
        second_code = str((await wait_for_certificate(stack, "rot-2"))["verification_code"])
        second = (await stack.api.get(f"/certificates/{second_code}/credential")).json()
        did_document = (await stack.api.get("/.well-known/did.json")).json()
        assert [m["id"].split("#")[1] for m in did_document["verificationMethod"]] == ["2026-a", "2027-a"]
        assert first["proof"][0]["verificationMethod"].endswith("#2026-a")
        assert second["proof"][0]["verificationMethod"].endswith("#2027-a")
        for credential in (first, second):
            assert verify_with_reference(credential, did_document, CONTEXTS) == (True, "")
        for code in (first_code, second_code):
            verdict = await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})
            assert verdict.json()["data"]["status"] == "valid"
