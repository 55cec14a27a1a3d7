// Baseline for the FHIRPath benchmark: fhirpath.js (npm `fhirpath`) with compiled expressions
// and the R4 model, over the same resources. Usage:
//   node fhirpath-bench.mjs <resources.json> <expressions.json> <seconds per expression>
// Prints one JSON object: {"results": [{"expression", "evals", "ns_per_eval", "trues"}]}.
import { readFileSync } from 'node:fs';
import fhirpath from 'fhirpath';
import r4 from 'fhirpath/fhir-context/r4/index.js';

const [resourcesPath, expressionsPath, secondsArg] = process.argv.slice(2);
const resources = JSON.parse(readFileSync(resourcesPath, 'utf8'));
const expressions = JSON.parse(readFileSync(expressionsPath, 'utf8'));
const seconds = Number(secondsArg || '2');

// each resource is evaluated with %current = itself and %previous = the same resource with
// status "preliminary" (what a status transition looks like)
const previous = resources.map((r) => ({ ...r, status: 'preliminary' }));

const results = [];
for (const expression of expressions) {
  const fn = fhirpath.compile(expression, r4);
  let trues = 0;
  for (let i = 0; i < resources.length; i++) {
    const out = fn(resources[i], { current: resources[i], previous: previous[i] });
    if (out.length === 1 && out[0] === true) trues++;
  }
  let evals = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(seconds * 1e9));
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < resources.length; i++) {
      fn(resources[i], { current: resources[i], previous: previous[i] });
    }
    evals += resources.length;
    now = process.hrtime.bigint();
  }
  results.push({ expression, evals, ns_per_eval: Number(now - start) / evals, trues });
}
console.log(JSON.stringify({ results }));
