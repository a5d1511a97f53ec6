"""Fine-tuning datasets: one JSON object per line, in one of these formats.

- chat: {"messages": [...], "tools"?: [...]} (OpenAI's, with tool calls and tool results; a
  message's content a string or a list of text parts)
- sharegpt: {"conversations": [{"from", "value"}]}, converted to chat
- alpaca: {"instruction", "input"?, "output", "system"?}, converted to chat
- prompt_completion: {"prompt": str, "completion": str}
- text: {"text": str}
- preference: {"input": {"messages", "tools"?}, "preferred_output": [msg],
  "non_preferred_output": [msg]} (OpenAI's DPO pairs; only DPO jobs take them)

formats.py knows them, chat.py (content.py its messages' content), converted.py and
preference.py parse them, reading.py reads files.
"""

from app.datasets.examples import (
    DatasetError,
    DatasetFormat,
    DatasetStats,
    Example,
    Message,
    Problem,
    SourceFormat,
    ToolCall,
    ValidationReport,
)
from app.datasets.formats import FORMATS, detect_format, parse_example
from app.datasets.reading import (
    UTF8_BOM,
    iter_lines,
    parse_line,
    read_examples,
    validate_stream,
)

__all__ = [
    "FORMATS",
    "UTF8_BOM",
    "DatasetError",
    "DatasetFormat",
    "DatasetStats",
    "Example",
    "Message",
    "Problem",
    "SourceFormat",
    "ToolCall",
    "ValidationReport",
    "detect_format",
    "iter_lines",
    "parse_example",
    "parse_line",
    "read_examples",
    "validate_stream",
]
