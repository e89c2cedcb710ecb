/* kit review: confirm or correct the kit's matches, with the keyboard, offline.
 *
 * The page's data is window.KIT_REVIEW_DATA (data_<dataset>.js, written by kit/review/site.py). Decisions are kept
 * in localStorage under data.storage_key and exported as decisions.json, the file `kit submit --decisions` reads:
 *   {"decisions": [{"image_id", "identity"}], "links": [{"a", "b", "same"}], "kit": {...}}
 * Cards are rendered in chunks as the page scrolls; images load lazily (the first EAGER cards at once).
 */
(function () {
  "use strict";
  var D = window.KIT_REVIEW_DATA;
  if (!D) { document.body.textContent = "no review data: data_<dataset>.js is missing"; return; }
  var NEW = "new_individual";
  var CHUNK = 24, EAGER = 20, PAIR_H = 150, GAP = 6, CELL_H = 128;
  var ident = D.task === "identification";
  var items = ident ? D.queries : D.clusters;
  var list = document.getElementById("list");
  var rendered = 0, cur = 0, sel = {}, linesShown = true;

  // ------------------------------------------------------------------ state: localStorage, undo, export
  function blank() { return {v: 1, decisions: {}, links: [], status: {}, history: [], cursor: 0}; }
  function load() {
    try {
      var s = JSON.parse(localStorage.getItem(D.storage_key) || "null");
      if (s && s.v === 1) { return s; }
    } catch (e) { /* a broken entry starts afresh */ }
    return blank();
  }
  var state = load();
  function save() {
    state.cursor = cur;
    try { localStorage.setItem(D.storage_key, JSON.stringify(state)); } catch (e) { toast("could not save: " + e); }
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmt(x, d) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(d === undefined ? 3 : d); }
  var toastTimer = null;
  function toast(msg) {
    var t = document.getElementById("toast");
    t.textContent = msg; t.className = "show";
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.className = ""; }, 2200);
  }

  function exportObject() {
    var decisions = {}, links = [], seen = {}, datasets = [];
    for (var i = 0; i < localStorage.length; i++) {
      var key = localStorage.key(i);
      if (key.indexOf(D.site_key) !== 0) { continue; }
      var s;
      try { s = key === D.storage_key ? state : JSON.parse(localStorage.getItem(key)); } catch (e) { continue; }
      if (!s || s.v !== 1) { continue; }
      datasets.push(key.slice(D.site_key.length));
      Object.keys(s.decisions).forEach(function (id) { decisions[id] = s.decisions[id]; });
      s.links.forEach(function (l) {
        var k = (l.a < l.b ? l.a + "\u0000" + l.b : l.b + "\u0000" + l.a) + "\u0000" + l.same;
        if (!seen[k]) { seen[k] = 1; links.push({a: l.a, b: l.b, same: l.same}); }
      });
    }
    var out = {kit: {layout: D.layout, task: D.task, competition: D.competition, datasets: datasets.sort(),
                     exported: new Date().toISOString(), answers: D.answers}};
    if (ident || Object.keys(decisions).length) {
      out.decisions = Object.keys(decisions).sort().map(function (id) {
        return {image_id: id, identity: decisions[id]};
      });
    }
    if (!ident || links.length) { out.links = links; }
    return out;
  }
  function download() {
    var blob = new Blob([JSON.stringify(exportObject(), null, 1) + "\n"], {type: "application/json"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "decisions.json";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    toast("decisions.json exported");
  }

  function undo() {
    var h = state.history.pop();
    if (!h) { toast("nothing to undo"); return; }
    if (h.t === "decide") {
      if (h.prev === null) { delete state.decisions[h.id]; } else { state.decisions[h.id] = h.prev; }
    } else if (h.t === "links") {
      state.links.splice(state.links.length - h.n, h.n);
      if (h.prev === null) { delete state.status[h.key]; } else { state.status[h.key] = h.prev; }
    }
    save();
    refresh(h.i);
    go(h.i);
    toast("undone");
  }

  // ------------------------------------------------------------------ rendering helpers
  function photo(p, h, eager, cls) {
    var ph = D.photos[p], w = Math.max(1, Math.round(ph[1] * h / ph[2]));
    return '<img src="' + esc(ph[0]) + '" width="' + w + '" height="' + h + '" alt=""' +
      (eager ? "" : ' loading="lazy"') + (cls ? ' class="' + cls + '"' : "") + ">";
  }
  function width(p, h) { var ph = D.photos[p]; return Math.max(1, Math.round(ph[1] * h / ph[2])); }
  function tauBar(q) {
    if (D.tau === null || q.score === null) { return '<span class="tau">no open-set score</span>'; }
    var lo = D.score_range[0], hi = D.score_range[1], W = 160;
    var x = function (v) { return hi > lo ? Math.max(0, Math.min(W, (v - lo) / (hi - lo) * W)) : W / 2; };
    // the kit's own decision says which side: the score is rounded for the page, tau is not
    var known = q.decision !== NEW;
    var d = 3;
    while (d < 6 && fmt(q.score, d) === fmt(D.tau, d)) { d += 1; }  // close to tau: enough digits to tell them apart
    return '<span class="tau"><svg width="' + (W + 8) + '" height="14"><line x1="4" y1="7" x2="' + (W + 4) +
      '" y2="7" stroke="#bbb" stroke-width="3"/><line x1="' + (x(D.tau) + 4) + '" y1="1" x2="' + (x(D.tau) + 4) +
      '" y2="13" stroke="#cf222e" stroke-width="2"/><circle cx="' + (x(q.score) + 4) + '" cy="7" r="4" fill="' +
      (known ? "#1f6feb" : "#9a6700") + '"/></svg>' + esc(D.score_name) + " " + fmt(q.score, d) +
      (known ? " &ge; " : " &lt; ") +
      "&tau; " + fmt(D.tau, d) + (known ? " (known)" : " (new)") + "</span>";
  }
  function linesSvg(c, qp, cp) {  // c.matches.lines: flat [xa, ya, xb, yb, ...] in thumbnail px
    var m = c.matches, wa = width(qp, PAIR_H), sa = PAIR_H / D.photos[qp][2], sb = PAIR_H / D.photos[cp][2];
    var lo = Math.min.apply(null, m.conf), hi = Math.max.apply(null, m.conf), out = "";  // conf: whole percent
    for (var k = 0; 4 * k + 3 < m.lines.length; k++) {
      var l = m.lines, t = hi > lo ? (m.conf[k] - lo) / (hi - lo) : 1;
      out += '<line x1="' + (l[4 * k] * sa).toFixed(1) + '" y1="' + (l[4 * k + 1] * sa).toFixed(1) + '" x2="' +
        (wa + GAP + l[4 * k + 2] * sb).toFixed(1) + '" y2="' + (l[4 * k + 3] * sb).toFixed(1) + '" stroke="hsl(' +
        Math.round(50 + 70 * t) + ',100%,50%)" stroke-width="1.2" stroke-opacity="0.85"/>';
    }
    return out;
  }
  // lines are drawn when their card comes near the screen: thousands of cards stay cheap to render
  function drawLines(card) {
    if (card.getAttribute("data-drawn")) { return; }
    card.setAttribute("data-drawn", "1");
    var q = items[+card.getAttribute("data-i")];
    Array.prototype.forEach.call(card.querySelectorAll("svg.lines"), function (svg) {
      var c = q.candidates[+svg.getAttribute("data-k")];
      svg.innerHTML = linesSvg(c, q.photo, c.photo);
    });
  }
  var lineObserver = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) { if (e.isIntersecting) { drawLines(e.target); lineObserver.unobserve(e.target); } });
  }, {rootMargin: "800px"}) : null;
  function candCaption(c, k) {
    var s = (k + 1) + " · <b>" + esc(c.identity) + "</b> · " +
      (c.listed ? "P " + fmt(c.p, 2) : "cos " + fmt(c.cos, 2) + " (not shortlisted)");
    if (c.head !== undefined && c.head !== null) { s += " · head cos " + fmt(c.head, 2); }
    if (c.matches) { s += " · " + c.matches.n + " matches"; }
    return s;
  }

  // ------------------------------------------------------------------ 2025: one card per query
  function queryCard(i) {
    var q = items[i], eager = i < EAGER, cands = q.candidates, drawn = D.local.drawn;
    var html = '<div class="head"><span class="num">#' + (i + 1) + '</span><span class="qid">' + esc(q.image_id) +
      '</span><span class="badge kit">kit: ' + esc(q.decision) + '</span><span class="you-slot"></span>' +
      tauBar(q) + '<span class="why">' + esc(q.reason) + "</span>";
    if (q.truth) {
      var ok = q.truth.status === "correct";
      html += '<span class="badge ' + (ok ? "good" : "bad") + '">' +
        (ok ? "correct" : q.truth.status.replace("_", " ")) +
        ": truth " + esc(q.truth.identity) + (q.truth.rank ? " (rank " + q.truth.rank + ")" : "") + "</span>";
    }
    html += '</div><div class="row">';
    if (!drawn) {
      html += '<figure class="single query">' + photo(q.photo, PAIR_H, eager) +
        "<figcaption><b>query</b></figcaption></figure>";
    }
    for (var k = 0; k < cands.length; k++) {
      var c = cands[k], cls = candClass(q, c);
      if (k < drawn) {
        var wa = width(q.photo, PAIR_H);
        html += '<figure class="pair' + cls + '" data-k="' + k + '"><div class="box">' + photo(q.photo, PAIR_H, eager) +
          photo(c.photo, PAIR_H, eager) + (c.matches ? '<svg class="lines" data-k="' + k + '" width="' +
          (wa + GAP + width(c.photo, PAIR_H)) + '" height="' + PAIR_H + '"></svg>' : "") +
          '</div><figcaption title="' + esc(c.identity + " · " + c.image_id) + '" style="max-width:' +
          (wa + GAP + width(c.photo, PAIR_H)) + 'px">' + candCaption(c, k) +
          "</figcaption></figure>";
      } else {
        var h = drawn ? 100 : PAIR_H;
        html += '<figure class="single' + cls + '" data-k="' + k + '">' + photo(c.photo, h, eager) +
          '<figcaption title="' + esc(c.identity + " · " + c.image_id) + '" style="max-width:' + width(c.photo, h) +
          'px">' + candCaption(c, k) + "</figcaption></figure>";
      }
    }
    if (!cands.length) { html += '<p class="note">no database photos in this dataset: every query is new</p>'; }
    return html + "</div>";
  }
  function candClass(q, c) {
    var mine = state.decisions[q.image_id];
    return (c.identity === q.decision ? " kitpick" : "") + (mine === c.identity ? " yourpick" : "") +
      (q.truth && q.truth.identity === c.identity ? " istruth" : "");
  }
  function refreshQuery(i) {
    var el = document.getElementById("card-" + i);
    if (!el) { return; }
    var q = items[i], mine = state.decisions[q.image_id];
    el.querySelector(".you-slot").innerHTML = mine === undefined ? "" : '<span class="badge you">you: ' + esc(mine) +
      (mine === q.decision ? " (accepted)" : " (changed)") + "</span>";
    el.classList.toggle("done", mine !== undefined);
    Array.prototype.forEach.call(el.querySelectorAll("figure[data-k]"), function (f) {
      var c = q.candidates[+f.getAttribute("data-k")];
      f.className = f.className.split(" ")[0] + candClass(q, c);
    });
  }
  function decide(identity, how) {
    var q = items[cur], prev = state.decisions[q.image_id];
    state.history.push({t: "decide", i: cur, id: q.image_id, prev: prev === undefined ? null : prev});
    state.decisions[q.image_id] = identity;
    save();
    refresh(cur);
    toast(q.image_id + ": " + how + " " + identity);
    go(cur + 1);
  }

  // ------------------------------------------------------------------ 2026: one card per cluster
  function clusterCard(i) {
    var c = items[i], eager = i < EAGER;
    var html = '<div class="head"><span class="num">#' + (i + 1) + '</span><span class="qid">' + esc(c.cluster) +
      "</span><span>" + c.members.length + " photo" + (c.members.length > 1 ? "s" : "") + "</span>" +
      '<span class="muted">cohesion ' + fmt(c.cohesion, 2) + " · nearest " + fmt(c.near, 2) + "</span>" +
      '<span class="you-slot"></span><span class="why">' + esc(c.reason) + "</span>";
    if (c.status) {
      var ok = c.status === "correct", n = {};
      c.members.forEach(function (m) { n[m.truth] = 1; });
      html += '<span class="badge ' + (ok ? "good" : "bad") + '">' + (c.status === "impure" ? "wrong merge: " +
        Object.keys(n).length + " individuals" : c.status === "split" ? "missed merge: this individual is in " +
        "other clusters too" : "correct") + "</span>";
    }
    html += '</div><div class="grid">';
    c.members.forEach(function (m, j) {
      html += '<figure class="ph" data-j="' + j + '">' +
        (j < 10 ? '<span class="k">' + ((j + 1) % 10) + "</span>" : "") +
        photo(m.photo, CELL_H, eager) + '<figcaption style="max-width:' + width(m.photo, CELL_H) + 'px">' +
        esc(m.image_id) + (m.truth !== undefined ? ' · <b style="color:' + hue(m.truth) + '">' + esc(m.truth) +
        "</b>" : "") + "</figcaption></figure>";
    });
    html += "</div>";
    if (c.neighbours.length) {
      html += '<div class="near"><span class="muted">nearest clusters:</span>';
      c.neighbours.forEach(function (nb, n) {
        var other = items[nb.index];
        html += '<div class="nb' + (nb.same_truth ? " same-truth" : "") + '"><span>' + esc(nb.cluster) + " · cos " +
          fmt(nb.sim, 2) + (nb.same_truth ? " · same individual" : "") + ' <button type="button" data-merge="' + n +
          '">merge' + (n === 0 ? " (m)" : "") + '</button></span><span class="imgs">';
        other.members.slice(0, 4).forEach(function (m) { html += photo(m.photo, 64, eager); });
        html += "</span></div>";
      });
      html += "</div>";
    }
    return html;
  }
  function hue(s) {
    var h = 0;
    for (var k = 0; k < String(s).length; k++) { h = (h * 31 + String(s).charCodeAt(k)) % 360; }
    return "hsl(" + h + ",70%,35%)";
  }
  function refreshCluster(i) {
    var el = document.getElementById("card-" + i);
    if (!el) { return; }
    var st = state.status[items[i].cluster];
    el.querySelector(".you-slot").innerHTML = st ? '<span class="badge you">you: ' + esc(st) + "</span>" : "";
    el.classList.toggle("done", !!st);
    Array.prototype.forEach.call(el.querySelectorAll(".ph"), function (f) {
      f.classList.toggle("sel", i === cur && !!sel[+f.getAttribute("data-j")]);
    });
  }
  function consistent(extra) {
    var parent = {}, all = state.links.concat(extra);
    function root(x) { while (parent[x] !== undefined && parent[x] !== x) { x = parent[x]; } return x; }
    all.forEach(function (l) { if (l.same) { var a = root(l.a), b = root(l.b); if (a !== b) { parent[a] = b; } } });
    for (var k = 0; k < all.length; k++) {
      if (!all[k].same && root(all[k].a) === root(all[k].b)) { return false; }
    }
    return true;
  }
  function addLinks(links, status) {
    var c = items[cur];
    if (!consistent(links)) {
      toast("that contradicts earlier links (undo them first)");
      return false;
    }
    var prev = state.status[c.cluster];
    state.history.push({t: "links", i: cur, n: links.length, key: c.cluster, prev: prev === undefined ? null : prev});
    Array.prototype.push.apply(state.links, links);
    state.status[c.cluster] = status;
    save();
    sel = {};
    refresh(cur);
    toast(c.cluster + ": " + status);
    return true;
  }
  function confirmCluster() {
    var m = items[cur].members;
    var links = m.slice(1).map(function (x) { return {a: m[0].image_id, b: x.image_id, same: true}; });
    if (addLinks(links, "confirmed")) { go(cur + 1); }
  }
  function split() {
    var m = items[cur].members, part = [], rest = [];
    m.forEach(function (x, j) { (sel[j] ? part : rest).push(x.image_id); });
    if (!part.length || !rest.length) {
      toast("select the photos to split off (1-9, 0 or click), not all of them");
      return;
    }
    var links = [];
    part.forEach(function (a) { rest.forEach(function (b) { links.push({a: a, b: b, same: false}); }); });
    addLinks(links, "split off " + part.length + " photo" + (part.length > 1 ? "s" : ""));
  }
  function merge(n) {
    var c = items[cur], nb = c.neighbours[n];
    if (!nb) { toast("no nearby cluster to merge with"); return; }
    var links = [{a: c.members[0].image_id, b: items[nb.index].members[0].image_id, same: true}];
    if (addLinks(links, "merged with " + nb.cluster)) { go(cur + 1); }
  }
  function toggle(j) {
    if (j >= items[cur].members.length) { return; }
    sel[j] = !sel[j];
    refresh(cur);
  }

  // ------------------------------------------------------------------ cards, cursor, keys
  function renderMore(n) {
    var frag = document.createDocumentFragment(), end = Math.min(items.length, rendered + n);
    for (var i = rendered; i < end; i++) {
      var el = document.createElement("section");
      el.className = "card" + (i === cur ? " current" : "");
      el.id = "card-" + i;
      el.setAttribute("data-i", i);
      el.innerHTML = ident ? queryCard(i) : clusterCard(i);
      frag.appendChild(el);
    }
    list.appendChild(frag);
    for (var r = rendered; r < end; r++) {
      refresh(r);
      if (ident) {
        var card = document.getElementById("card-" + r);
        if (r < EAGER || !lineObserver) { drawLines(card); } else { lineObserver.observe(card); }
      }
    }
    rendered = end;
  }
  function refresh(i) { if (ident) { refreshQuery(i); } else { refreshCluster(i); } progress(); }
  function progress() {
    var n = ident ? Object.keys(state.decisions).filter(function (id) { return idSet[id]; }).length
      : Object.keys(state.status).length;
    document.getElementById("progress").textContent = n + " / " + items.length + (ident ? " queries" : " clusters") +
      " reviewed";
  }
  function go(i) {
    i = Math.max(0, Math.min(items.length - 1, i));
    var old = document.getElementById("card-" + cur);
    if (old) { old.classList.remove("current"); }
    if (cur !== i) { sel = {}; if (!ident) { refreshCluster(cur); } }
    cur = i;
    while (rendered <= i) { renderMore(CHUNK); }
    var el = document.getElementById("card-" + i);
    el.classList.add("current");
    el.scrollIntoView({block: "nearest"});
    save();
  }
  var idSet = {};
  if (ident) { items.forEach(function (q) { idSet[q.image_id] = 1; }); }

  var KEYS = ident ? [
    ["j / ↓", "next query"], ["k / ↑", "previous query"], ["a / Enter", "accept the kit's decision"],
    ["1 … 9", "pick candidate N's identity"], ["n", "mark new_individual"], ["s / space", "skip"],
    ["u / Backspace", "undo"], ["l", "show / hide the match lines"], ["e", "export decisions.json"], ["?", "this help"]
  ] : [
    ["j / ↓", "next cluster"], ["k / ↑", "previous cluster"],
    ["a / Enter", "confirm the cluster (same individual)"],
    ["1 … 9, 0 / click", "select photos"], ["x", "split the selected photos off"], ["c", "clear the selection"],
    ["m", "merge with the nearest cluster (or its button)"], ["s / space", "skip"], ["u / Backspace", "undo"],
    ["e", "export decisions.json"], ["?", "this help"]
  ];
  function help(show) {
    var h = document.getElementById("help");
    if (show === undefined) { show = h.hidden; }
    h.innerHTML = "<h2>Keys</h2><table>" + KEYS.map(function (k) {
      return "<tr><td><kbd>" + esc(k[0]) + "</kbd></td><td>" + esc(k[1]) + "</td></tr>";
    }).join("") + "</table><p>Progress is kept in this browser. Export writes <code>decisions.json</code>: run " +
      "<code>kit submit DATA --decisions decisions.json</code>.</p><p class=\"muted\">Esc or ? closes this.</p>";
    h.hidden = !show;
  }
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.metaKey || (e.ctrlKey && e.key !== "z")) { return; }
    var k = e.key, done = true;
    if (k === "?" || (k === "Escape" && !document.getElementById("help").hidden)) {
      help(k === "?" ? undefined : false);
    }
    else if (k === "j" || k === "ArrowDown") { go(cur + 1); }
    else if (k === "k" || k === "ArrowUp") { go(cur - 1); }
    else if (k === "s" || k === " ") { go(cur + 1); }
    else if (k === "u" || k === "Backspace" || (e.ctrlKey && k === "z")) { undo(); }
    else if (k === "e") { download(); }
    else if (ident && (k === "a" || k === "Enter")) { decide(items[cur].decision, "accepted"); }
    else if (ident && k === "n") { decide(NEW, "marked"); }
    else if (ident && /^[1-9]$/.test(k)) {
      var c = items[cur].candidates[+k - 1];
      if (c) { decide(c.identity, "picked"); } else { toast("no candidate " + k); }
    }
    else if (ident && k === "l") {
      linesShown = !linesShown;
      document.body.classList.toggle("hide-lines", !linesShown);
    }
    else if (!ident && (k === "a" || k === "Enter")) { confirmCluster(); }
    else if (!ident && /^[0-9]$/.test(k)) { toggle((+k + 9) % 10); }
    else if (!ident && k === "x") { split(); }
    else if (!ident && k === "m") { merge(0); }
    else if (!ident && k === "c") { sel = {}; refresh(cur); }
    else { done = false; }
    if (done) { e.preventDefault(); }
  });
  list.addEventListener("click", function (e) {
    var card = e.target.closest(".card");
    if (!card) { return; }
    var i = +card.getAttribute("data-i");
    if (i !== cur) { go(i); }
    var b = e.target.closest("[data-merge]");
    if (b) { merge(+b.getAttribute("data-merge")); return; }
    var f = e.target.closest(".ph");
    if (f) { toggle(+f.getAttribute("data-j")); }
  });
  document.getElementById("export").addEventListener("click", download);
  document.getElementById("help-button").addEventListener("click", function () { help(); });

  // ------------------------------------------------------------------ start
  var counts = D.counts || {};
  document.getElementById("summary").innerHTML = Object.keys(counts).map(function (k) {
    return "<b>" + counts[k] + "</b> " + esc(k.replace("_", " "));
  }).join(" · ") + (ident ? " · local matches: " + (D.local.drawn ? "drawn for the top " + D.local.drawn +
    " candidates" : "none (" + esc(D.local.note || "local matching off") + ")") : "") +
    (D.answers ? " · <b>validation split with answers</b>: errors first" : " · most uncertain first");
  cur = Math.min(state.cursor || 0, Math.max(0, items.length - 1));
  renderMore(Math.max(CHUNK, cur + 1));
  if (items.length) { go(cur); }
  progress();
  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (entries) {
      if (entries[0].isIntersecting && rendered < items.length) { renderMore(CHUNK); }
    }, {rootMargin: "1500px"}).observe(document.getElementById("sentinel"));
  } else {
    renderMore(items.length);
  }
  // the time until the first EAGER cards show their photos (bench/review.py reads it)
  var first = [];
  for (var i = 0; i < Math.min(EAGER, rendered); i++) {
    Array.prototype.push.apply(first, document.getElementById("card-" + i).querySelectorAll("img"));
  }
  var waiting = first.length;
  function one() {
    if (--waiting === 0) {
      api.firstPhotosMs = performance.now();
      document.documentElement.setAttribute("data-ready", "1");
    }
  }
  var api = window.kitReview = {state: state, exportObject: exportObject, download: download, go: go,
                                current: function () { return cur; }, firstPhotosMs: null};
  if (!waiting) { waiting = 1; one(); }
  first.forEach(function (im) {
    if (im.complete) { one(); } else { im.addEventListener("load", one); im.addEventListener("error", one); }
  });
})();
