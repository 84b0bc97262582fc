/** Usage per day and per API key (GET /v1/usage), drawn with uPlot (served by the edge) and listed as tables. */
import uPlot from "../../vendor/uplot.js";
import { api } from "../api.js";
import { card, field, h, table } from "../dom.js";

const COLORS = { images: "#1f5fbf", generations: "#1a7f37", failed: "#b42318" };

function chartWidth(el) {
  return Math.max(260, Math.floor(el.getBoundingClientRect().width));
}

export async function render(view) {
  const days = h(
    "select",
    { name: "days" },
    [7, 30, 90].map((d) => h("option", { value: String(d), selected: d === 30 }, `last ${d} days`)),
  );
  const dayChart = h("div", {
    class: "chart",
    id: "usage-days",
    role: "img",
    "aria-label": "Images, generations and failures per day",
  });
  const keyChart = h("div", { class: "chart", id: "usage-keys", role: "img", "aria-label": "Images per API key" });
  const dayTable = h("div");
  const keyTable = h("div");
  const totals = h("p", { id: "usage-totals" });
  let plots = [];

  async function refresh() {
    for (const p of plots) p.destroy();
    plots = [];
    const u = await api("GET", `/usage?days=${days.value}`);
    const sum = (k) => u.days.reduce((n, d) => n + d[k], 0);
    totals.textContent = `${sum("images")} images in ${sum("generations")} generations (${sum("failed")} failed), ${u.since.slice(0, 10)} to ${u.until.slice(0, 10)}.`;
    const xs = u.days.map((d) => Date.parse(`${d.date}T00:00:00Z`) / 1000);
    plots.push(
      new uPlot(
        {
          width: chartWidth(dayChart),
          height: 220,
          scales: { x: { time: true } },
          series: [
            {},
            { label: "images", stroke: COLORS.images, width: 2 },
            { label: "generations", stroke: COLORS.generations, width: 2 },
            { label: "failed", stroke: COLORS.failed, width: 2, dash: [6, 4] },
          ],
          axes: [{}, { label: "count" }],
        },
        [xs, u.days.map((d) => d.images), u.days.map((d) => d.generations), u.days.map((d) => d.failed)],
        dayChart,
      ),
    );
    const names = u.keys.map((k) => k.key_name ?? k.key_id ?? "dashboard");
    keyChart.hidden = !u.keys.length;
    if (u.keys.length)
      plots.push(
        new uPlot(
          {
            width: chartWidth(keyChart),
            height: 200,
            scales: { x: { time: false, range: [-0.5, u.keys.length - 0.5] } },
            series: [
              { label: "key", value: (_, i) => names[Math.round(i)] ?? "" },
              {
                label: "images",
                fill: COLORS.images,
                stroke: COLORS.images,
                paths: uPlot.paths.bars({ size: [0.6, 80] }),
                points: { show: false },
              },
            ],
            axes: [
              { splits: () => names.map((_, i) => i), values: (_, ticks) => ticks.map((i) => names[i] ?? "") },
              { label: "images" },
            ],
            legend: { show: true },
          },
          [names.map((_, i) => i), u.keys.map((k) => k.images)],
          keyChart,
        ),
      );
    dayTable.replaceChildren(
      table(
        ["Date", "Images", "Generations", "Failed"],
        u.days
          .filter((d) => d.generations)
          .map((d) =>
            h(
              "tr",
              {},
              h("td", {}, d.date),
              h("td", {}, String(d.images)),
              h("td", {}, String(d.generations)),
              h("td", {}, String(d.failed)),
            ),
          ),
        "Usage per day",
      ),
    );
    keyTable.replaceChildren(
      table(
        ["Key", "Images", "Generations"],
        u.keys.map((k, i) =>
          h(
            "tr",
            { dataset: { key: names[i] } },
            h("td", {}, names[i]),
            h("td", {}, String(k.images)),
            h("td", {}, String(k.generations)),
          ),
        ),
        "Usage per key",
      ),
    );
  }

  const resize = () => {
    for (const p of plots) p.setSize({ width: chartWidth(p.root.parentElement), height: p.height });
  };
  window.addEventListener("resize", resize);
  days.onchange = refresh;
  view.append(
    card(null, h("div", { class: "row" }, field("Period", days)), totals),
    card("Per day", dayChart, h("details", {}, h("summary", {}, "As a table"), dayTable)),
    card(
      "Per API key",
      h("p", { class: "muted" }, "Generations made in the dashboard count under “dashboard”."),
      keyChart,
      keyTable,
    ),
  );
  await refresh();
  return () => {
    window.removeEventListener("resize", resize);
    for (const p of plots) p.destroy();
  };
}
