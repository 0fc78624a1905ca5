// A deliberately vulnerable MCP server (stdio) for Elaria's firewall tests. Never deploy it.
//
// `merge_settings` deep-merges its `patch` argument (an object, or JSON text) into a settings
// object with the classic unguarded recursive merge, so a `__proto__` key pollutes
// Object.prototype for the whole process. `is_polluted` reports whether `({}).polluted` is set.
//
// It speaks newline-delimited JSON-RPC by hand rather than through the SDK: once the prototype
// is polluted the SDK's own message validation breaks, and `is_polluted` must still answer.
import { createInterface } from "node:readline";

const settings = {};

function isObject(value) {
  return value !== null && typeof value === "object";
}

function merge(target, source) {
  for (const key of Object.keys(source)) {
    if (isObject(source[key])) {
      if (!isObject(target[key])) target[key] = {};
      merge(target[key], source[key]);
    } else {
      target[key] = source[key];
    }
  }
  return target;
}

const TOOLS = [
  {
    name: "merge_settings",
    description: "Deep-merge a patch into the settings.",
    inputSchema: {
      type: "object",
      properties: { patch: { description: "an object, or its JSON text" } },
      required: ["patch"],
    },
  },
  {
    name: "is_polluted",
    description: "Whether Object.prototype has been polluted in this process.",
    inputSchema: { type: "object", properties: {} },
  },
];

const text = (value, isError = false) => ({
  content: [{ type: "text", text: typeof value === "string" ? value : JSON.stringify(value) }],
  isError,
});

function callTool(name, args) {
  if (name === "merge_settings") {
    const patch = typeof args.patch === "string" ? JSON.parse(args.patch) : args.patch;
    merge(settings, patch);
    return text({ settings, polluted: ({}).polluted === true });
  }
  if (name === "is_polluted") return text({ polluted: ({}).polluted === true });
  return text(`unknown tool ${name}`, true);
}

function handle(message) {
  switch (message.method) {
    case "initialize":
      return {
        protocolVersion: message.params?.protocolVersion ?? "2025-06-18",
        capabilities: { tools: {} },
        serverInfo: { name: "vulnerable", version: "1.0.0" },
      };
    case "ping":
      return {};
    case "tools/list":
      return { tools: TOOLS };
    case "tools/call":
      return callTool(message.params.name, message.params.arguments ?? {});
    default:
      throw Object.assign(new Error(`method not found: ${message.method}`), { code: -32601 });
  }
}

const send = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const message = JSON.parse(line);
  if (message.id === undefined) return; // a notification
  try {
    send({ jsonrpc: "2.0", id: message.id, result: handle(message) });
  } catch (error) {
    send({ jsonrpc: "2.0", id: message.id, error: { code: error.code ?? -32603, message: String(error.message) } });
  }
});
