// piwheels' simple index under nginx: PEP 691 content negotiation on the Accept header's
// q-values, and PEP 503 canonical project names. The same rules as the built-in web server
// (master/src/web_server.rs); docs/nginx.conf loads this file (njs, Debian package
// libnginx-mod-http-js). See docs/web-server.md. Written for njs 0.7 (Debian 12): no for-of.

// The forms of a simple page, in the order the PEP prefers them.
const OFFERS = [
    { name: 'json', main: 'application', sub: 'vnd.pypi.simple.v1+json' },
    { name: 'vnd', main: 'application', sub: 'vnd.pypi.simple.v1+html' },
    { name: 'html', main: 'text', sub: 'html' },
];

// An HTTP quality value in thousandths, or null when malformed.
function quality(value) {
    const m = /^(0|1)(?:\.(\d{0,3}))?$/.exec(value);
    if (!m) return null;
    const fraction = Number(((m[2] || '') + '000').slice(0, 3));
    if (m[1] === '1') return fraction === 0 ? 1000 : null;
    return fraction;
}

// The media ranges of an Accept header; malformed ones are skipped, and the "latest" simple
// types stand for v1.
function mediaRanges(accept) {
    const ranges = [];
    const items = accept.split(',');
    for (let i = 0; i < items.length; i++) {
        const parts = items[i].split(';');
        const media = parts[0].trim().toLowerCase();
        const slash = media.indexOf('/');
        if (slash <= 0 || slash === media.length - 1) continue;
        const main = media.slice(0, slash);
        let sub = media.slice(slash + 1);
        if (main === '*' && sub !== '*') continue;
        if (sub === 'vnd.pypi.simple.latest+json') sub = 'vnd.pypi.simple.v1+json';
        if (sub === 'vnd.pypi.simple.latest+html') sub = 'vnd.pypi.simple.v1+html';
        let q = 1000;
        for (let j = 1; j < parts.length; j++) {
            const parameter = parts[j];
            const eq = parameter.indexOf('=');
            if (eq < 0 || parameter.slice(0, eq).trim().toLowerCase() !== 'q') continue;
            q = quality(parameter.slice(eq + 1).trim());
            break;
        }
        if (q !== null) ranges.push({ main: main, sub: sub, q: q });
    }
    return ranges;
}

// Breaks ties: a form named outright goes by the PEP's preference (JSON first); among forms
// only a wildcard admits, plain HTML comes first.
function rank(name, specificity) {
    if (specificity === 2) return { json: 3, vnd: 2, html: 1 }[name];
    return { html: 3, vnd: 2, json: 1 }[name];
}

// "json", "vnd" or "html": the form of a simple page to send; "" when none is acceptable (406).
function flavour(r) {
    let accept = r.headersIn['Accept'];
    const format = r.args.format;
    if (format) {
        try {
            accept = decodeURIComponent(format).replace(/ /g, '+');
        } catch (e) {
            accept = format;
        }
    }
    if (!accept || !accept.trim()) return 'html';
    const ranges = mediaRanges(accept);
    let best = null;
    for (let i = 0; i < OFFERS.length; i++) {
        const offer = OFFERS[i];
        let match = null;
        for (let j = 0; j < ranges.length; j++) {
            const range = ranges[j];
            let specificity;
            if (range.main === '*' && range.sub === '*') specificity = 0;
            else if (range.main === offer.main && range.sub === '*') specificity = 1;
            else if (range.main === offer.main && range.sub === offer.sub) specificity = 2;
            else continue;
            if (!match || specificity > match.specificity) match = { specificity: specificity, q: range.q };
        }
        if (!match || match.q === 0) continue;
        const key = [match.q, match.specificity, rank(offer.name, match.specificity)];
        if (!best || key[0] > best.key[0] || (key[0] === best.key[0] && (key[1] > best.key[1]
            || (key[1] === best.key[1] && key[2] > best.key[2])))) {
            best = { key: key, name: offer.name };
        }
    }
    return best ? best.name : '';
}

// The PEP 503 canonical form of a project name.
function canonicalName(name) {
    return name.replace(/[-_.]+/g, '-').toLowerCase();
}

// Where to redirect a /simple/<name>... or /project/<name>... URI whose name is not canonical;
// "" when it is. The two files that sit where a name would (/simple/index.html and
// /simple/index.json) are left alone.
function canonical(r) {
    const m = /^\/(simple|project)\/([^/]+)(\/.*)?$/.exec(r.uri);
    if (!m) return '';
    const name = m[2];
    const rest = m[3] || '';
    if (m[1] === 'simple' && !rest && (name === 'index.html' || name === 'index.json')) return '';
    const fixed = canonicalName(name);
    if (fixed === name) return '';
    return '/' + m[1] + '/' + encodeURIComponent(fixed) + (rest || '/');
}

export default { flavour, canonical };
