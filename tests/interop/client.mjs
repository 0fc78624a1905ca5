// A test client on the official MCP TypeScript SDK: connect, list tools, make calls, print JSON.
//
//   node client.mjs '<plan JSON>'
//
// plan: {"transport": "stdio", "command": "...", "args": [...], "cwd": "...", "env": {...}}
//    or {"transport": "http", "url": "http://127.0.0.1:PORT/mcp"}
//   plus "calls": [{"name": "...", "arguments": {...}}, ...]
// prints: {"server": {...}, "tools": [names], "results": [{"name", "isError", "text"}]}
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const plan = JSON.parse(process.argv[2]);

const transport =
  plan.transport === "http"
    ? new StreamableHTTPClientTransport(new URL(plan.url))
    : new StdioClientTransport({
        command: plan.command,
        args: plan.args ?? [],
        cwd: plan.cwd,
        env: { ...process.env, ...(plan.env ?? {}) },
        stderr: "inherit",
      });

const client = new Client({ name: "elaria-interop-test", version: "1.0.0" });
await client.connect(transport);

const tools = (await client.listTools()).tools;
const results = [];
for (const call of plan.calls ?? []) {
  const result = await client.callTool({ name: call.name, arguments: call.arguments ?? {} });
  const text = (result.content ?? [])
    .filter((block) => block.type === "text")
    .map((block) => block.text)
    .join("\n");
  results.push({ name: call.name, isError: result.isError === true, text });
}

process.stdout.write(
  JSON.stringify({ server: client.getServerVersion(), tools: tools.map((t) => t.name), results }) + "\n",
);
await client.close();
