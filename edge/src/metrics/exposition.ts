/**
 * The Prometheus text exposition format, version 0.0.4: one `# HELP` and one `# TYPE` line per metric family,
 * then its samples. Only what the edge needs (gauges and counters, no timestamps), written to the format's rules:
 * names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label values escape `\`, `"` and newlines, help text `\` and newlines.
 */

/** What a scraper must be told the body is; Prometheus picks its parser by it. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type MetricType = "gauge" | "counter";

export interface Sample {
  labels?: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  help: string;
  type: MetricType;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

const escapeHelp = (s: string) => s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
const escapeLabel = (s: string) => s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Number.POSITIVE_INFINITY) return "+Inf";
  if (v === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(v);
}

/**
 * Writes metric families as one exposition body. A counter's name ends in `_total`, as the format's conventions ask.
 *
 * @example
 * formatExposition([{ name: "queue_depth", help: "Queued jobs.", type: "gauge", samples: [{ value: 3 }] }]);
 * // "# HELP queue_depth Queued jobs.\n# TYPE queue_depth gauge\nqueue_depth 3\n"
 */
export function formatExposition(families: MetricFamily[]): string {
  const lines: string[] = [];
  const seen = new Set<string>();
  for (const f of families) {
    if (!METRIC_NAME.test(f.name)) throw new Error(`Invalid metric name '${f.name}'.`);
    if (seen.has(f.name)) throw new Error(`Metric '${f.name}' is written twice.`);
    if (f.type === "counter" && !f.name.endsWith("_total")) throw new Error(`Counter '${f.name}' must end in _total.`);
    seen.add(f.name);
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels ?? {});
      for (const [k] of labels) if (!LABEL_NAME.test(k)) throw new Error(`Invalid label name '${k}' on '${f.name}'.`);
      const set = labels.length ? `{${labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}` : "";
      lines.push(`${f.name}${set} ${formatValue(s.value)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
