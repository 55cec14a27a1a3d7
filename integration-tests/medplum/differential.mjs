// node differential.mjs CRITERIA.json RESOURCES.ndjson → {"criteria": ["Type/id", ...], ...}
import { readFileSync } from 'node:fs';
import { parseSearchRequest, matchesSearchRequest } from './medplum.mjs';

const [criteriaPath, ndjsonPath] = process.argv.slice(2);
const criteria = JSON.parse(readFileSync(criteriaPath, 'utf8'));
const resources = readFileSync(ndjsonPath, 'utf8').split('\n').filter((l) => l).map((l) => JSON.parse(l));
const out = {};
for (const c of criteria) {
  const req = parseSearchRequest(c);
  out[c] = resources.filter((r) => matchesSearchRequest(r, req)).map((r) => `${r.resourceType}/${r.id}`);
}
console.log(JSON.stringify(out));
