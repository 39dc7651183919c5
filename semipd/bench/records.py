"""What the benchmark client records about one request: timings and token counts.

All times are seconds. `send_time` and `scheduled_time` are offsets from the start of the
run; `ttft`, `itls` and `latency` are measured from the moment the request was sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One sent request as the client saw it.

    `output_tokens` is the server's ``usage.completion_tokens`` when the stream reported it
    (`usage_reported`), otherwise the number of non-empty content chunks received.
    A failed request keeps whatever was measured before the failure and names it in `error`.
    """

    index: int
    scheduled_time: float
    send_time: float
    input_tokens: int
    requested_output_tokens: int
    output_tokens: int = 0
    ttft: float | None = None
    itls: tuple[float, ...] = ()
    latency: float | None = None
    usage_reported: bool = False
    error: str = ""

    @property
    def success(self) -> bool:
        return not self.error

    @property
    def tpot(self) -> float | None:
        """(latency - ttft) / (output_tokens - 1); None when failed or with fewer than two tokens."""
        if not self.success or self.ttft is None or self.latency is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["itls"] = list(self.itls)
        out["success"] = self.success
        out["tpot"] = self.tpot
        return out
