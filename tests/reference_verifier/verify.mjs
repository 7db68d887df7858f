// Verifies one eddsa-rdfc-2022 Data Integrity proof with Digital Bazaar's reference implementation.
// stdin:  {"credential": {...}, "didDocument": {...}, "contexts": {"<url>": <document>, ...}}
// stdout: {"verified": true|false, "error": "..."}; exit 0 when a verdict was reached, 2 otherwise.
import {cryptosuite as eddsaRdfc2022CryptoSuite} from '@digitalbazaar/eddsa-rdfc-2022-cryptosuite';
import {DataIntegrityProof} from '@digitalbazaar/data-integrity';
import jsigs from 'jsonld-signatures';
import {describeError, makeDocumentLoader, readStdinJson, writeJson} from './loader.mjs';

const {purposes: {AssertionProofPurpose}} = jsigs;

async function main() {
  let request;
  let documentLoader;
  try {
    request = await readStdinJson();
    if(!request.credential || typeof request.credential !== 'object') {
      throw new Error('request has no "credential" object');
    }
    if(!request.didDocument || typeof request.didDocument.id !== 'string') {
      throw new Error('request has no "didDocument" with an "id"');
    }
    documentLoader = makeDocumentLoader({contexts: request.contexts || {}, didDocument: request.didDocument});
  } catch(e) {
    writeJson({verified: false, error: `bad request: ${e.message}`});
    process.exitCode = 2;
    return;
  }
  // One proof, alone or as a set of one (Open Badges 3.0 wants the set).
  const proofs = Array.isArray(request.credential.proof) ? request.credential.proof : [request.credential.proof];
  const proof = proofs.length === 1 ? proofs[0] : undefined;
  if(!proof || proof.cryptosuite !== eddsaRdfc2022CryptoSuite.name) {
    writeJson({verified: false, error: 'credential has no single eddsa-rdfc-2022 proof'});
    return;
  }
  const suite = new DataIntegrityProof({cryptosuite: eddsaRdfc2022CryptoSuite});
  const result = await jsigs.verify(request.credential, {
    suite,
    purpose: new AssertionProofPurpose(),
    documentLoader,
  });
  writeJson({verified: result.verified === true, error: describeError(result.error)});
}

main().catch(e => {
  writeJson({verified: false, error: `verifier failed: ${e.stack || e}`});
  process.exitCode = 2;
});
