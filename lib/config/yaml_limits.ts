/**
 * Size limits of a YAML document (a config, a program upload), checked before anything that costs more than linear
 * time: the yaml library's own duplicate-key check compares each key with every earlier one of its mapping, so a
 * 1 MiB upload of one mapping took tens of seconds, and each alias resolved walks the whole document. The text is
 * counted first (lines and flow items, in one pass over the characters), then the parsed tree (nodes, keys of one
 * mapping, aliases); only a document within the limits is checked further, and its duplicate keys are found here
 * with one map per mapping.
 */
import { isAlias, isMap, isNode, type Node, type Pair, type ParsedNode, visit } from "yaml";

export interface YamlLimits {
  /** Lines plus flow items (`,`, `[`, `{`): counted in the text before it is parsed. */
  readonly maxLines: number;
  /** Nodes of the parsed tree: every key, value and collection. */
  readonly maxNodes: number;
  /** Keys of one mapping. */
  readonly maxKeys: number;
  /** Aliases (`*name`) in the document. */
  readonly maxAliases: number;
}

/** For a session program (an upload): 256 APs with their ports and parameters fit many times over. */
export const PROGRAM_YAML_LIMITS: YamlLimits = Object.freeze({
  maxLines: 20_000,
  maxNodes: 60_000,
  maxKeys: 1_000,
  maxAliases: 0,
});

/** For a config file. */
export const CONFIG_YAML_LIMITS: YamlLimits = Object.freeze({
  maxLines: 50_000,
  maxNodes: 150_000,
  maxKeys: 10_000,
  maxAliases: 100,
});

/** A limit a document goes over, at the offset where it does. */
export interface YamlLimitProblem {
  readonly message: string;
  readonly offset: number;
}

const NL = 10;
const COMMA = 44;
const BRACKET = 91;
const BRACE = 123;

/** Counts lines and flow items of the text; the first offset past `maxLines`, or null. */
export function checkYamlText(text: string, limits: YamlLimits, what: string): YamlLimitProblem | null {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === NL || c === COMMA || c === BRACKET || c === BRACE) {
      if (++n > limits.maxLines) {
        return {
          message:
            `Cannot read ${what}: more than ${limits.maxLines} lines and flow items (the limit of ${what}s)`,
          offset: i,
        };
      }
    }
  }
  return null;
}

/**
 * Walks a parsed document once: a node, mapping or alias count over its limit stops the walk with that problem;
 * within the limits, every key repeated in its mapping is reported (`duplicate`, with the first key).
 */
export function checkYamlTree(
  contents: Node | null,
  limits: YamlLimits,
  what: string,
  duplicate?: (key: Node, first: Node, text: string) => void,
): YamlLimitProblem | null {
  let nodes = 0;
  let aliases = 0;
  let problem: YamlLimitProblem | null = null;
  const at = (node: unknown) => (isNode(node) ? (node as ParsedNode).range?.[0] ?? 0 : 0);
  visit(contents, {
    Node(_key, node) {
      if (++nodes > limits.maxNodes) {
        problem = {
          message: `Cannot read ${what}: more than ${limits.maxNodes} YAML nodes`,
          offset: at(node),
        };
        return visit.BREAK;
      }
      if (isAlias(node) && ++aliases > limits.maxAliases) {
        problem = {
          message: limits.maxAliases
            ? `Cannot read ${what}: more than ${limits.maxAliases} aliases`
            : `Cannot read ${what}: aliases (*name) are not allowed here`,
          offset: at(node),
        };
        return visit.BREAK;
      }
      if (!isMap(node)) return;
      const items = node.items as Pair[];
      if (items.length > limits.maxKeys) {
        problem = {
          message: `Cannot read ${what}: a mapping with ${items.length} keys (at most ${limits.maxKeys})`,
          offset: at(items[limits.maxKeys].key),
        };
        return visit.BREAK;
      }
      if (!duplicate) return;
      const seen = new Map<unknown, Node>();
      for (const pair of items) {
        const key = pair.key as Node | null;
        // Keys compare by their scalar value; a collection as a key is left to the schema (it is never valid).
        const value = key && "value" in key && typeof key.value !== "object" ? key.value : null;
        if (value === null) continue;
        const first = seen.get(value);
        if (first) duplicate(key!, first, String(value));
        else seen.set(value, key!);
      }
    },
  });
  return problem;
}

/** Line and column of an offset of a text not parsed yet (one pass, only on the way to an error). */
export function textPos(text: string, offset: number): { line: number; col: number } {
  let line = 1;
  let start = 0;
  for (let i = text.indexOf("\n"); i !== -1 && i < offset; i = text.indexOf("\n", i + 1)) {
    line++;
    start = i + 1;
  }
  return { line, col: offset - start + 1 };
}
