// Shared by verify.mjs and sign.mjs: an offline JSON-LD document loader and stdin/stdout helpers.
import {contexts as credentialsContexts} from '@digitalbazaar/credentials-context';
import dataIntegrityContext from '@digitalbazaar/data-integrity-context';
import multikeyContext from '@digitalbazaar/multikey-context';

// The contexts shipped inside the npm packages (VC 2.0, Data Integrity, Multikey): these copies come
// from the reference implementation, not from the code under test.
export const BUNDLED_CONTEXTS = new Map([
  ...credentialsContexts,
  ...dataIntegrityContext.contexts,
  ...multikeyContext.contexts,
]);

export const MULTIKEY_CONTEXT_URL = multikeyContext.CONTEXT_URL;

// Key order must not make two equal JSON documents differ.
function stableStringify(value) {
  if(Array.isArray(value)) {
    return `[${value.map(stableStringify).join(',')}]`;
  }
  if(value !== null && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map(k => `${JSON.stringify(k)}:${stableStringify(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * A document loader serving only: the bundled contexts, the contexts given by the caller, the
 * given DID document (for the DID itself) and its verification methods (`<did>#<fragment>`).
 * Anything else throws, so no verification ever depends on the network.
 */
export function makeDocumentLoader({contexts = {}, didDocument = null} = {}) {
  const served = new Map(BUNDLED_CONTEXTS);
  for(const [url, document] of Object.entries(contexts)) {
    const bundled = BUNDLED_CONTEXTS.get(url);
    // A caller's copy of a context the packages ship must mean the same thing, or the check
    // would not be independent of the caller's copy.
    if(bundled !== undefined && stableStringify(bundled) !== stableStringify(document)) {
      throw new Error(`context ${url} differs from the copy shipped by the reference packages`);
    }
    served.set(url, document);
  }
  const did = didDocument ? didDocument.id : null;

  return async function documentLoader(url) {
    if(served.has(url)) {
      return {contextUrl: null, documentUrl: url, document: structuredClone(served.get(url))};
    }
    if(did !== null && url === did) {
      return {contextUrl: null, documentUrl: url, document: structuredClone(didDocument)};
    }
    if(did !== null && url.startsWith(`${did}#`)) {
      const fragment = url.slice(did.length);
      const methods = didDocument.verificationMethod || [];
      const method = methods.find(m => m.id === url || m.id === fragment);
      if(method) {
        const document = {'@context': MULTIKEY_CONTEXT_URL, ...structuredClone(method), id: url};
        return {contextUrl: null, documentUrl: url, document};
      }
      throw new Error(`verification method ${url} is not in the DID document`);
    }
    throw new Error(`document loader: ${url} is not available offline`);
  };
}

export async function readStdinJson() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

export function writeJson(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

// Flattens jsonld-signatures' nested errors into one readable line.
export function describeError(error) {
  if(!error) {
    return '';
  }
  const errors = Array.isArray(error) ? error : [error];
  const parts = [];
  for(const e of errors) {
    if(e && Array.isArray(e.errors) && e.errors.length > 0) {
      parts.push(describeError(e.errors));
    } else if(e) {
      // jsonld.js wraps a loader failure; its cause says which URL was refused and why.
      const cause = e.details && e.details.cause;
      const message = e.message || String(e);
      parts.push(cause ? `${message} (cause: ${describeError(cause)})` : message);
    }
  }
  return parts.join('; ');
}
