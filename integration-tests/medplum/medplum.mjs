// Medplum's matcher (@medplum/core matchesSearchRequest) as a peer, fed the FHIR R4
// search-parameter definitions vendored in schemas/.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// @medplum/core 5.x expects a browser-like global WebSocket at load time; matching never uses it.
globalThis.WebSocket ??= class {};
const core = await import('@medplum/core');

const here = fileURLToPath(new URL('.', import.meta.url));
const bundle = JSON.parse(readFileSync(`${here}/../../schemas/fhir/r4/search-parameters.json`, 'utf8'));
core.indexSearchParameterBundle(bundle);

export const { parseSearchRequest, matchesSearchRequest } = core;
