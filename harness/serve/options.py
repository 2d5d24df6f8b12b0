"""How a checkpoint is served: the one declaration behind ``bench run``/``bench serve`` flags,
a plan's ``vllm:`` section, the launch command and the manifest's stored options.

Every default lives here and nowhere else; the CLI reads its flag defaults and help from these
fields, so changing one here changes it everywhere.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

AUTO_PARSER = "auto"  # pick from the checkpoint's family and chat template
NO_PARSER = "none"  # no parser at all
PARSER_HELP = f"{AUTO_PARSER!r} (from the checkpoint), {NO_PARSER!r}, or a vLLM parser name"


class ServeOptions(BaseModel):
    """Everything about launching vLLM that is not the checkpoint itself or its served name."""

    model_config = ConfigDict(extra="forbid")
    python: str | None = Field(
        default=None, description="interpreter that has vLLM installed (else BENCH_VLLM_PYTHON, else this one)"
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="port for the launched server (default: a free one)")
    max_model_len: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="context length of the launched server; 'auto': the checkpoint's, capped by what fits "
                    "(on CPU at most 32768)",
    )
    chat_template: str | None = Field(default=None, description="chat template file passed to vLLM")
    reasoning_parser: str = Field(default=AUTO_PARSER, min_length=1, description=PARSER_HELP)
    tool_call_parser: str = Field(default=AUTO_PARSER, min_length=1, description=PARSER_HELP)
    args: list[str] = Field(
        default_factory=list,
        description="extra vLLM arguments, passed through, e.g. --tensor-parallel-size=2",
    )
    startup_timeout_s: float = Field(default=900.0, gt=0, description="seconds to wait for the server to be ready")

    def parser_overridden(self) -> bool:
        """Whether either parser was picked by hand rather than from the checkpoint."""
        return self.reasoning_parser != AUTO_PARSER or self.tool_call_parser != AUTO_PARSER
