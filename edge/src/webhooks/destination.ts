/**
 * Where a webhook may go. Without `ALLOW_PRIVATE_WEBHOOKS`, a URL whose host is a private, loopback, link-local,
 * unique-local or otherwise non-public address, or a name that only resolves inside a network, is refused (SSRF).
 * The check resolves nothing: it reads the host as the WHATWG URL parser normalised it (which already turns
 * `0x7f.1`, `2130706433` and `017700000001` into `127.0.0.1`, and `[::ffff:127.0.0.1]` into `[::ffff:7f00:1]`).
 * A public name that resolves to a private address is out of its reach; deliveries do not follow redirects, so at
 * least a public host cannot bounce them inward.
 */

/** IPv4 ranges that are not the public internet (RFC 6890 and friends), as [first octets, prefix length]. */
const PRIVATE_V4: Array<[number[], number]> = [
  [[0], 8], // "this" network
  [[10], 8],
  [[100, 64], 10], // carrier-grade NAT
  [[127], 8],
  [[169, 254], 16], // link-local, cloud metadata
  [[172, 16], 12],
  [[192, 0, 0], 24],
  [[192, 0, 2], 24], // documentation
  [[192, 168], 16],
  [[198, 18], 15], // benchmarking
  [[198, 51, 100], 24],
  [[203, 0, 113], 24],
  [[224], 4], // multicast
  [[240], 4], // reserved, broadcast
];

/** Names that only mean something inside a network. */
const PRIVATE_NAME = /(^|\.)(localhost|local|internal|intranet|lan|home\.arpa|corp|private)$/;

function ipv4(host: string): number[] | undefined {
  const parts = host.split(".");
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p))) return undefined;
  const bytes = parts.map(Number);
  return bytes.every((b) => b <= 255) ? bytes : undefined;
}

function privateV4(bytes: number[]): boolean {
  const value = ((bytes[0]! << 24) | (bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!) >>> 0;
  return PRIVATE_V4.some(([start, bits]) => {
    const base = ((start[0]! << 24) | ((start[1] ?? 0) << 16) | ((start[2] ?? 0) << 8)) >>> 0;
    const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
    return (value & mask) >>> 0 === (base & mask) >>> 0;
  });
}

/** The eight 16-bit groups of an IPv6 address as the URL parser writes it (hex, `::` compression, no dots). */
function ipv6(host: string): number[] | undefined {
  if (!host.startsWith("[") || !host.endsWith("]")) return undefined;
  const text = host.slice(1, -1);
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const parse = (s: string | undefined) => (s ? s.split(":").map((g) => Number.parseInt(g, 16)) : []);
  const left = parse(head);
  const right = parse(tail);
  const groups = tail === undefined ? left : [...left, ...new Array(8 - left.length - right.length).fill(0), ...right];
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}

function privateV6(g: number[]): boolean {
  const v4At = (i: number) => [g[i]! >> 8, g[i]! & 0xff, g[i + 1]! >> 8, g[i + 1]! & 0xff];
  const zeros = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  if (zeros(0, 8)) return true; // unspecified
  if (zeros(0, 7) && g[7] === 1) return true; // loopback
  if (zeros(0, 5) && g[5] === 0xffff) return privateV4(v4At(6)); // IPv4-mapped
  if (zeros(0, 6)) return privateV4(v4At(6)); // IPv4-compatible (deprecated)
  if (g[0] === 0x64 && g[1] === 0xff9b && zeros(2, 6)) return privateV4(v4At(6)); // NAT64
  if (g[0] === 0x2002) return privateV4(v4At(1)); // 6to4
  const first = g[0]!;
  return (
    (first & 0xfe00) === 0xfc00 || // unique local
    (first & 0xffc0) === 0xfe80 || // link-local
    (first & 0xffc0) === 0xfec0 || // site-local (deprecated)
    (first & 0xff00) === 0xff00 || // multicast
    (first === 0x2001 && g[1] === 0x0db8) // documentation
  );
}

/**
 * Why `url` may not receive webhooks (a sentence), or undefined when it may. Only http(s) URLs are taken at all;
 * `allowPrivate` (the deployment's `ALLOW_PRIVATE_WEBHOOKS`) lets them reach any host.
 */
export function refusedDestination(url: string, allowPrivate: boolean): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "is not a URL";
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return "must be an http or https URL";
  if (allowPrivate) return undefined;
  const host = parsed.hostname.toLowerCase().replace(/\.$/, "");
  const v6 = ipv6(host);
  if (v6) return privateV6(v6) ? `points at a non-public address (${host})` : undefined;
  const v4 = ipv4(host);
  if (v4) return privateV4(v4) ? `points at a non-public address (${host})` : undefined;
  if (!host.includes(".") || PRIVATE_NAME.test(host)) return `points at a host name that is not public (${host})`;
  return undefined;
}
