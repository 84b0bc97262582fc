/**
 * Debian's Chromium driven by playwright-core, for the dashboard's browser tests. A test that cannot launch it fails
 * (it does not skip): .ci/run installs the `chromium` package.
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/**
 * Where screenshots go: an ignored folder on every run, so a test run leaves the tree clean; with
 * `UPDATE_SCREENSHOTS=1` the committed ones the dashboard's README shows (refresh them only when a page changes).
 */
export const SCREENSHOTS = process.env.UPDATE_SCREENSHOTS
  ? resolve(import.meta.dirname, "../../edge/src/dashboard/screenshots")
  : resolve(import.meta.dirname, "../.work/screenshots");
export const DESKTOP = { width: 1000, height: 760 };
export const PHONE = { width: 375, height: 740 };

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM))
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (as .ci/run does), or set CHROMIUM_PATH`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
      "--disable-dev-shm-usage",
    ],
  });
}

// The page's document, for the callbacks that run inside Chromium (the tests compile without the DOM library).
declare const document: { documentElement: { scrollWidth: number; clientWidth: number; scrollHeight: number } };

/** Everything a page reported that a test must not ignore: uncaught errors, console errors, CSP violations. */
export interface Problems {
  errors: string[];
  csp: string[];
}

/** A fresh browser context (its own cookies) whose pages record their problems into `problems`. */
export async function newContext(browser: Browser, problems: Problems, viewport = DESKTOP): Promise<BrowserContext> {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  context.on("page", (page) => watch(page, problems));
  return context;
}

function watch(page: Page, problems: Problems) {
  page.on("pageerror", (e) => problems.errors.push(`${page.url()}: ${e}`));
  page.on("console", (m) => {
    const text = m.text();
    if (/Content Security Policy|Refused to (load|execute|apply|connect|frame)/i.test(text))
      problems.csp.push(`${page.url()}: ${text}`);
    // 4xx answers the tests provoke on purpose (wrong password, refused member actions) log as resource errors.
    else if (m.type() === "error" && !/Failed to load resource/.test(text))
      problems.errors.push(`${page.url()}: ${text}`);
  });
}

/** Width the page scrolls sideways by (0 when nothing overflows the viewport). */
export async function sidewaysOverflow(page: Page): Promise<number> {
  return page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
}

/** The page from the top, up to `maxHeight` CSS pixels of it, into SCREENSHOTS/<name>.png. */
export async function screenshot(page: Page, name: string, maxHeight = 900) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const path = join(SCREENSHOTS, `${name}.png`);
  const { width, height } = await page.evaluate(() => ({
    width: document.documentElement.clientWidth,
    height: document.documentElement.scrollHeight,
  }));
  await page.screenshot({
    path,
    fullPage: true,
    clip: { x: 0, y: 0, width, height: Math.min(height, maxHeight) },
    animations: "disabled",
    caret: "hide",
  });
  return path;
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/**
 * The WCAG 2 A and AA rules axe-core finds broken on the page ("rule: count × impact"). axe is evaluated through
 * the DevTools protocol, which the page's CSP does not govern; the page itself never loads it.
 */
export async function accessibilityViolations(page: Page): Promise<string[]> {
  await page.evaluate(axeSource);
  return page.evaluate(async () => {
    const axe = (globalThis as unknown as { axe: { run(o: object): Promise<{ violations: AxeViolation[] }> } }).axe;
    const result = await axe.run({ runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return result.violations.map(
      (v) =>
        `${v.id}: ${v.nodes.length} × ${v.impact} (${v.nodes
          .map((n) => n.target.join(" "))
          .slice(0, 3)
          .join(", ")})`,
    );
  });
}
interface AxeViolation {
  id: string;
  impact: string;
  nodes: Array<{ target: string[] }>;
}
