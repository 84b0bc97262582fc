/** The exact request a page made (or would make), as a copyable curl command and an SDK call. */

const shellQuote = (s) => `'${s.replace(/'/g, "'\\''")}'`;

export function curlSnippet(method, path, body) {
  const lines = [
    `curl -X ${method} ${shellQuote(`${location.origin}/v1${path}`)}`,
    `  -H "Authorization: Bearer $IMAGEGEN_API_KEY"`,
  ];
  if (body !== undefined)
    lines.push(`  -H 'Content-Type: application/json'`, `  -d ${shellQuote(JSON.stringify(body, null, 2))}`);
  return lines.join(" \\\n");
}

export function sdkSnippet(call, body) {
  return [
    `import { ImageGen } from "@imagegen/sdk";`,
    "",
    `const client = new ImageGen({ apiKey: process.env.IMAGEGEN_API_KEY, baseURL: ${JSON.stringify(location.origin)} });`,
    `const result = await client.${call}(${JSON.stringify(body, null, 2)});`,
    "console.log(result);",
  ].join("\n");
}
