#!/usr/bin/env python3
"""SLO-aware SM reallocation demo on a simulated GPU (same as `semipd demo`).

    python examples/semi_pd/slo_aware_example.py \\
        --model-path meta-llama/Llama-3.1-8B-Instruct \\
        --ttft-target 200 --tpot-target 25 \\
        --initial-prefill-sm 70 --initial-decode-sm 30 \\
        --simulation-cycles 40
"""

import sys

from semipd.sim.demo import main

if __name__ == "__main__":
    sys.exit(main())
