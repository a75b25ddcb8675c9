"""A realistic sample job, as a lab would write it: per sample, two gzipped FASTQ read files
in, a shell filter keeping the pairs whose reads are long enough and free of N, a JSON report."""
from __future__ import annotations

import json
import random

FILTER = r"""set -e
s={sample}
zcat $INPUT/${{s}}_R1.fastq.gz | paste - - - - > $TEMP/r1.tsv
zcat $INPUT/${{s}}_R2.fastq.gz | paste - - - - > $TEMP/r2.tsv
paste $TEMP/r1.tsv $TEMP/r2.tsv | awk -F '\t' -v s=$s -v o1=$OUTPUT/${{s}}_R1.filtered.fastq \
  -v o2=$OUTPUT/${{s}}_R2.filtered.fastq -v rep=$OUTPUT/report.json '
  {{ n++ }}
  length($2) >= 50 && length($6) >= 50 && $2 !~ /N/ && $6 !~ /N/ {{
    k++; print $1 "\n" $2 "\n" $3 "\n" $4 > o1; print $5 "\n" $6 "\n" $7 "\n" $8 > o2 }}
  END {{ printf "{{\"sample\": \"%s\", \"pairs\": %d, \"kept\": %d}}\n", s, n, k > rep }}'
touch $OUTPUT/${{s}}_R1.filtered.fastq $OUTPUT/${{s}}_R2.filtered.fastq
echo "$s done"
"""


def reads(rnd: random.Random, sample: str, mate: int, n: int) -> list[tuple[str, str, str, str]]:
    out = []
    for i in range(n):
        seq = "".join(rnd.choice("ACGT" * 30 + "N") for _ in range(rnd.randint(30, 120)))
        out.append((f"@{sample}.{i}/{mate}", seq, "+", "I" * len(seq)))
    return out


def expected_results(sample: str, r1: list, r2: list) -> dict[str, bytes]:
    """What FILTER must write into the sample's output folder, computed here independently."""
    kept = [(a, b) for a, b in zip(r1, r2)
            if len(a[1]) >= 50 and len(b[1]) >= 50 and "N" not in a[1] and "N" not in b[1]]
    return {
        f"{sample}_R1.filtered.fastq": "".join("\n".join(a) + "\n" for a, _ in kept).encode(),
        f"{sample}_R2.filtered.fastq": "".join("\n".join(b) + "\n" for _, b in kept).encode(),
        "report.json": json.dumps({"sample": sample, "pairs": len(r1), "kept": len(kept)}).encode() + b"\n",
    }
