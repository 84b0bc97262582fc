/** Reads the pages share: models (as /v1/models names them) and add-ons with their versions' validation state. */
import { api } from "./api.js";

export async function loadModels() {
  return (await api("GET", "/models")).data;
}

/** Every visible add-on with its versions (newest first) and `ready`: its newest ready version, if any. */
export async function loadAddons() {
  const list = (await api("GET", "/addons")).data;
  return Promise.all(
    list.map(async (a) => {
      const versions = (await api("GET", `/addons/${a.id}/versions`)).data
        .slice()
        .sort((x, y) => y.version - x.version);
      return { ...a, versions, ready: versions.find((v) => v.status === "ready") ?? null };
    }),
  );
}

/** Which add-on versions runners hold warm: Map of "id@version" → runner count (empty where the API lacks it). */
export async function loadWarm() {
  try {
    const warm = await api("GET", "/addons/warm");
    return new Map(warm.data.map((w) => [w.ref, w.runners]));
  } catch {
    return new Map();
  }
}
