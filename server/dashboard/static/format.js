// Numbers, times and sizes formatted for people (the browser's locale).

const locale = undefined; // the browser's own
const intFmt = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });

export function int(n) {
  return n == null || Number.isNaN(n) ? "—" : intFmt.format(n);
}

// 3 significant digits, at most 4 decimals: 0.693, 12.4, 1,234
export function num(n, digits = 3) {
  if (n == null || !Number.isFinite(n)) return "—";
  const abs = Math.abs(n);
  if (abs >= 1000) return intFmt.format(n);
  const decimals = abs === 0 ? 0 : Math.min(4, Math.max(0, digits - 1 - Math.floor(Math.log10(abs))));
  return new Intl.NumberFormat(locale, { minimumFractionDigits: 0, maximumFractionDigits: decimals }).format(n);
}

export function percent(fraction, decimals = 1) {
  if (fraction == null || !Number.isFinite(fraction)) return "—";
  return new Intl.NumberFormat(locale, {
    style: "percent", minimumFractionDigits: decimals, maximumFractionDigits: decimals,
  }).format(fraction);
}

// a signed change in percentage points: "+3.2 pp", "−12.0 pp"
export function points(delta) {
  if (delta == null || !Number.isFinite(delta)) return "";
  const v = (delta * 100).toFixed(1);
  return `${delta >= 0 ? "+" : "−"}${v.replace("-", "")} pp`;
}

export function bytes(n) {
  if (n == null) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i === 0 ? n : num(n)} ${units[i]}`;
}

// 45 s, 4 min 12 s, 2 h 5 min, 3 d 4 h
export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "—";
  let s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return h ? `${d} d ${h} h` : `${d} d`;
  if (h) return m ? `${h} h ${m} min` : `${h} h`;
  return s ? `${m} min ${s} s` : `${m} min`;
}

// "just now", "12 s ago", "3 min ago", "in 2 min"
export function relative(ts, now) {
  if (ts == null) return "—";
  const delta = now - ts;
  if (Math.abs(delta) < 2) return "just now";
  return delta > 0 ? `${duration(delta)} ago` : `in ${duration(-delta)}`;
}

const dateFmt = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "medium" });
const timeFmt = new Intl.DateTimeFormat(locale, { timeStyle: "medium" });

// full local date and time of a UNIX time, for titles
export function datetime(ts) {
  return ts == null ? "—" : dateFmt.format(new Date(ts * 1000));
}

// the time only if today, else date and time
export function when(ts, now) {
  if (ts == null) return "—";
  const d = new Date(ts * 1000);
  return new Date(now * 1000).toDateString() === d.toDateString() ? timeFmt.format(d) : dateFmt.format(d);
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "—";
}
