"""The paired cost ratio against whole-run throughput, per recipe, over result directories:
python results/paired-cost/compare.py results/paired-cost/unloaded results/paired-cost/loaded-a ..."""

import json, glob, statistics, sys
dirs = sys.argv[1:]
recipes = ["joint_pcgrad", "joint_fgm", "joint_contrastive", "joint_sum"]
def load(d):
    out = {}
    for f in glob.glob(f"{d}/*.json"):
        r = json.load(open(f))
        if "run_id" in r: out.setdefault(r["recipe_name"], []).append(r)
    return out
data = {d: load(d) for d in dirs}
print("| recipe | " + " | ".join(f"{d.split('/')[-1]} paired" for d in dirs) + " | " + " | ".join(f"{d.split('/')[-1]} throughput" for d in dirs) + " |")
for rec in recipes:
    row = [rec]
    for d in dirs:
        rs = data[d][rec]; row.append(f"{statistics.fmean(r['cost']['ratio'] for r in rs):.3f}")
    for d in dirs:
        base = statistics.fmean(r['train']['examples_per_second'] for r in data[d]['joint_sum'])
        mine = statistics.fmean(r['train']['examples_per_second'] for r in data[d][rec])
        row.append(f"{base/mine:.3f}")
    print("| " + " | ".join(row) + " |")
