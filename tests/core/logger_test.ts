import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { isLogLevel, Logger, type LogLevel } from "../../lib/core/logger.ts";

const START = Date.UTC(2024, 4, 6, 7, 8, 9, 10);

function setup(level: LogLevel = "info") {
  const clock = new ManualClock(START);
  const lines: string[] = [];
  const logger = new Logger({ level, clock, sink: (line) => lines.push(line) });
  return { clock, lines, logger };
}

Deno.test("Logger writes one logfmt line per event with the clock's time", () => {
  const { clock, lines, logger } = setup();
  logger.info("listening", { addr: "127.0.0.1:9090", port: 9090, tls: false });
  clock.advance(1_500);
  logger.warn("slow");
  assert.deepEqual(lines, [
    "ts=2024-05-06T07:08:09.010Z level=info component=main msg=listening addr=127.0.0.1:9090 port=9090 tls=false",
    "ts=2024-05-06T07:08:10.510Z level=warn component=main msg=slow",
  ]);
});

Deno.test("Logger leaves out undefined fields and writes null as null", () => {
  const { lines, logger } = setup();
  logger.info("peer", { id: undefined, last: null });
  assert.deepEqual(lines, ["ts=2024-05-06T07:08:09.010Z level=info component=main msg=peer last=null"]);
});

Deno.test("Logger drops events below its level", () => {
  const { lines, logger } = setup("warn");
  logger.debug("d");
  logger.info("i");
  logger.warn("w");
  logger.error("e");
  assert.deepEqual(lines.map((l) => l.split(" ")[1]), ["level=warn", "level=error"]);
});

Deno.test("Logger.level set at run time changes what is written", () => {
  const { lines, logger } = setup("error");
  logger.info("hidden");
  logger.level = "debug";
  assert.equal(logger.level, "debug");
  logger.debug("shown");
  assert.equal(lines.length, 1);
  assert.match(lines[0], /level=debug .*msg=shown$/);
});

Deno.test("Logger.child writes with its component and shares level changes both ways", () => {
  const { lines, logger } = setup("info");
  const child = logger.child("relay");
  child.info("joined", { peer: "a" });
  assert.equal(lines.at(-1), "ts=2024-05-06T07:08:09.010Z level=info component=relay msg=joined peer=a");

  logger.level = "error";
  assert.equal(child.level, "error");
  child.warn("hidden");
  assert.equal(lines.length, 1);

  child.level = "debug";
  assert.equal(logger.level, "debug");
  logger.debug("shown");
  assert.equal(lines.length, 2);
  assert.match(lines[1], /component=main msg=shown$/);
});

Deno.test("Logger quotes values with spaces, quotes, equals signs, backslashes and newlines", () => {
  const { lines, logger } = setup();
  logger.info("log level changed", {
    space: "a b",
    quote: 'say "hi"',
    equals: "k=v",
    backslash: "C:\\tmp",
    newline: "one\ntwo",
    empty: "",
    plain: "ok",
  });
  const expected = 'msg="log level changed" space="a b" quote="say \\"hi\\"" equals="k=v"' +
    ' backslash="C:\\\\tmp" newline="one\\ntwo" empty="" plain=ok';
  assert.equal(lines[0], `ts=2024-05-06T07:08:09.010Z level=info component=main ${expected}`);
  assert.doesNotMatch(lines[0], /\n/, "one event is one line");
});

Deno.test("isLogLevel accepts the four levels only", () => {
  for (const level of ["debug", "info", "warn", "error"]) assert.equal(isLogLevel(level), true);
  for (const level of ["trace", "INFO", "", "warning"]) assert.equal(isLogLevel(level), false);
});

Deno.test("Logger quotes control characters so a value cannot write raw escapes", () => {
  const { lines, logger } = setup();
  logger.info("peer", { name: "\x1b[31mred", nul: "a\x00b" });
  assert.equal(lines[0].includes("\x1b"), false);
  assert.equal(lines[0].includes("\x00"), false);
  assert.match(lines[0], /name="\\u001b\[31mred" nul="a\\u0000b"$/);
});

Deno.test("Logger never throws when its sink does, counts the lost lines and says so when the sink is back", () => {
  const clock = new ManualClock(START);
  const lines: string[] = [];
  let broken = true;
  const logger = new Logger({
    level: "info",
    clock,
    sink: (line) => {
      if (broken) throw new Deno.errors.BrokenPipe("Broken pipe (os error 32)");
      lines.push(line);
    },
  });
  logger.info("one");
  logger.child("relay").error("two");
  assert.equal(logger.lost, 2);
  broken = false;
  logger.info("three");
  assert.deepEqual(lines, [
    'ts=2024-05-06T07:08:09.010Z level=warn component=logger msg="log lines lost" lost=2',
    "ts=2024-05-06T07:08:09.010Z level=info component=main msg=three",
  ]);
  logger.info("four");
  assert.equal(lines.length, 3, "the loss is told once");
});
