// Medplum matcher baseline: node bench.mjs WORKLOAD.json OBSERVATIONS.ndjson [SECONDS]
// Prints events/s for JSON.parse + matchesSearchRequest against every subscription.
import { readFileSync } from 'node:fs';
import { parseSearchRequest, matchesSearchRequest } from './medplum.mjs';

const [workloadPath, ndjsonPath, seconds = '20'] = process.argv.slice(2);
const criteria = JSON.parse(readFileSync(workloadPath, 'utf8')).criteria;
const requests = criteria.map((c) => parseSearchRequest(c));
const lines = readFileSync(ndjsonPath, 'utf8').split('\n').filter((l) => l.length > 0);

const budget = Number(seconds) * 1000;
const start = performance.now();
let events = 0;
let matches = 0;
while (performance.now() - start < budget && events < lines.length) {
  const resource = JSON.parse(lines[events]);
  for (const r of requests) {
    if (matchesSearchRequest(resource, r)) matches++;
  }
  events++;
}
const rate = events / ((performance.now() - start) / 1000);
console.log(`medplum events=${events} subscriptions=${requests.length} matches=${matches} rate=${rate.toFixed(1)}`);
