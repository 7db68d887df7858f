// Signs a credential with eddsa-rdfc-2022 using the reference implementation, so the Python
// harness can test itself without our own signer.
// stdin:  {"credential": {...}, "seed": "<64 hex chars>", "did": "did:web:...", "kid": "...",
//          "contexts": {"<url>": <document>}, "created": "<optional xsd:dateTime>"}
// stdout: {"credential": <signed>, "didDocument": <DID document publishing the key>}
import * as Ed25519Multikey from '@digitalbazaar/ed25519-multikey';
import {cryptosuite as eddsaRdfc2022CryptoSuite} from '@digitalbazaar/eddsa-rdfc-2022-cryptosuite';
import {DataIntegrityProof} from '@digitalbazaar/data-integrity';
import jsigs from 'jsonld-signatures';
import {MULTIKEY_CONTEXT_URL, makeDocumentLoader, readStdinJson, writeJson} from './loader.mjs';

const {purposes: {AssertionProofPurpose}} = jsigs;

async function main() {
  const request = await readStdinJson();
  const {credential, seed, did, kid} = request;
  if(typeof seed !== 'string' || !/^[0-9a-fA-F]{64}$/.test(seed)) {
    throw new Error('"seed" must be 32 bytes as hex');
  }
  const id = `${did}#${kid}`;
  const keyPair = await Ed25519Multikey.generate({seed: Buffer.from(seed, 'hex'), id, controller: did});
  const didDocument = {
    '@context': ['https://www.w3.org/ns/did/v1', MULTIKEY_CONTEXT_URL],
    id: did,
    verificationMethod: [{id, type: 'Multikey', controller: did, publicKeyMultibase: keyPair.publicKeyMultibase}],
    assertionMethod: [id],
  };
  const suite = new DataIntegrityProof({
    signer: keyPair.signer(),
    cryptosuite: eddsaRdfc2022CryptoSuite,
    ...(request.created ? {date: request.created} : {}),
  });
  const signed = await jsigs.sign(credential, {
    suite,
    purpose: new AssertionProofPurpose(),
    documentLoader: makeDocumentLoader({contexts: request.contexts || {}, didDocument}),
  });
  writeJson({credential: signed, didDocument});
}

main().catch(e => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exitCode = 2;
});
