// A server-sent events parser for streams read with fetch() (EventSource cannot send an
// Authorization header). Feed it decoded text in chunks of any size; it calls onFrame once
// per complete frame with {id, event, data}. Comment lines (": keep-alive") are skipped.

export function createSseParser(onFrame) {
  let buffer = "";
  let frame = { id: null, event: "message", data: [] };

  function dispatch() {
    if (frame.data.length > 0 || frame.event !== "message") {
      onFrame({ id: frame.id, event: frame.event, data: frame.data.join("\n") });
    }
    frame = { id: null, event: "message", data: [] };
  }

  function line(text) {
    if (text === "") {
      dispatch();
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") frame.data.push(value);
    else if (field === "event") frame.event = value;
    else if (field === "id") frame.id = value;
  }

  return {
    feed(text) {
      buffer += text;
      // Lines end with \n, \r\n or \r; a trailing \r may be the first half of \r\n.
      const lines = buffer.split(/\r\n|\n|\r(?!$)/);
      buffer = lines.pop();
      for (const text of lines) line(text);
    },
  };
}
