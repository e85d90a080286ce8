/** Lines of a byte stream, one at a time (a child's stdout, this process's stdin). */
export function lineReader(
  stream: ReadableStream<Uint8Array>,
): { next(): Promise<string | null>; cancel(): Promise<void> } {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  return {
    /** The next line without its newline; null once the stream has ended. */
    async next(): Promise<string | null> {
      for (;;) {
        const nl = text.indexOf("\n");
        if (nl >= 0) {
          const line = text.slice(0, nl);
          text = text.slice(nl + 1);
          return line;
        }
        const { value, done } = await reader.read();
        if (done) return null;
        text += value;
      }
    },
    cancel: () => reader.cancel().catch(() => {}),
  };
}
