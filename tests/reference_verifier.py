"""Calls the reference eddsa-rdfc-2022 implementation (Digital Bazaar's npm packages) from tests.

Our credentials are signed by our own Python code; checking them only with that same code
would let a shared misunderstanding of the algorithm pass. ``verify_with_reference`` runs
``tests/reference_verifier/verify.mjs`` under Node instead. ``make test`` installs its
pinned packages (``npm ci``); when Node or the packages are missing the helpers raise, so a
test that needs the reference never silently skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parent / "reference_verifier"
OB_CONTEXT_URL = "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"
# Byte-identical copy of 1EdTech's OB 3.0.3 context, for the harness's own tests.
OB_CONTEXT_FILE = REFERENCE_DIR / "fixtures" / "context-3.0.3.json"
# Node starts in about 0.3 s; the margin is for a loaded two-core test machine.
TIMEOUT_S = 60.0

_REQUIRED_PACKAGES = (
    "@digitalbazaar/eddsa-rdfc-2022-cryptosuite",
    "@digitalbazaar/data-integrity",
    "@digitalbazaar/ed25519-multikey",
    "@digitalbazaar/credentials-context",
    "jsonld-signatures",
)


def ob_context() -> dict[str, Any]:
    """The Open Badges 3.0.3 JSON-LD context shipped beside the reference verifier."""
    context: dict[str, Any] = json.loads(OB_CONTEXT_FILE.read_text(encoding="utf-8"))
    return context


def bundled_context(url: str) -> dict[str, Any]:
    """A context as shipped inside the reference npm packages (VC 2.0 so far)."""
    files = {
        "https://www.w3.org/ns/credentials/v2": "@digitalbazaar/credentials-context/contexts/v2.jsonld",
    }
    if url not in files:
        raise KeyError(url)
    _require_installation()
    context: dict[str, Any] = json.loads((REFERENCE_DIR / "node_modules" / files[url]).read_text(encoding="utf-8"))
    return context


def verify_with_reference(
    credential: dict[str, Any], did_document: dict[str, Any], contexts: dict[str, dict[str, Any]]
) -> tuple[bool, str]:
    """Verifies ``credential``'s eddsa-rdfc-2022 proof with the reference implementation.

    ``contexts`` are the JSON-LD contexts the verifier may load besides the ones its packages
    ship (VC 2.0, Data Integrity, Multikey); ``did_document`` resolves the issuer DID and its
    ``<did>#<kid>`` keys. Nothing is fetched from the network. Returns (verified, error text).
    """
    answer = _run("verify.mjs", {"credential": credential, "didDocument": did_document, "contexts": contexts})
    return bool(answer["verified"]), str(answer.get("error", ""))


def sign_with_reference(
    credential: dict[str, Any],
    seed: bytes,
    did: str,
    kid: str,
    *,
    contexts: dict[str, dict[str, Any]] | None = None,
    created: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Signs ``credential`` with the reference implementation: returns (signed, DID document).

    The key is the Ed25519 key of the 32-byte ``seed``, published as ``<did>#<kid>``.
    ``contexts`` defaults to the shipped OB 3.0.3 context; ``created`` fixes the proof time.
    """
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    request: dict[str, Any] = {
        "credential": credential,
        "seed": seed.hex(),
        "did": did,
        "kid": kid,
        "contexts": {OB_CONTEXT_URL: ob_context()} if contexts is None else contexts,
    }
    if created is not None:
        request["created"] = created
    answer = _run("sign.mjs", request)
    return answer["credential"], answer["didDocument"]


def _require_installation() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(
            "the reference verifier needs Node.js (node) on PATH: run `make system-deps`, then `make test` "
            "(which installs its npm packages)"
        )
    modules = REFERENCE_DIR / "node_modules"
    missing = [name for name in _REQUIRED_PACKAGES if not (modules / name / "package.json").is_file()]
    if missing:
        raise RuntimeError(
            f"the reference verifier's npm packages are not installed ({', '.join(missing)}): run `make test`, "
            "which runs `npm ci --prefix tests/reference_verifier`"
        )
    return node


def _run(script: str, request: dict[str, Any]) -> dict[str, Any]:
    node = _require_installation()
    try:
        done = subprocess.run(
            [node, str(REFERENCE_DIR / script)],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=TIMEOUT_S,
            cwd=REFERENCE_DIR,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{script} did not answer within {TIMEOUT_S:.0f} s") from exc
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        answer = {}
    if done.returncode != 0:
        detail = answer.get("error") or done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{script} failed (exit {done.returncode}): {detail}")
    return answer
