// Live orders table: every second, ask for the rows changed since the last poll (short requests: no stream
// holds a listener thread) and update them in place; new rows go on top of the first page.
(function () {
  "use strict";
  var table = document.getElementById("orders");
  if (!table) { return; }
  var body = table.tBodies[0];
  var since = table.dataset.since || "";
  var query = table.dataset.query || "";
  var firstPage = table.dataset.first === "1";
  var live = document.getElementById("live");
  var busy = false;

  function cell(tr, cls, text) {
    var td = tr.querySelector("td." + cls);
    if (!td) { td = document.createElement("td"); td.className = cls; tr.appendChild(td); }
    td.textContent = text;
    return td;
  }

  function fill(tr, r) {
    cell(tr, "created", r.created);
    var cid = tr.querySelector("td.cid");
    if (!cid) {
      cid = document.createElement("td"); cid.className = "cid";
      var a = document.createElement("a");
      a.href = "/ui/orders/" + encodeURIComponent(r.command_id);
      a.textContent = r.command_id;
      cid.appendChild(a); tr.appendChild(cid);
    }
    cell(tr, "strategy", r.strategy);
    cell(tr, "symbol", r.symbol);
    cell(tr, "side", r.kind + " " + r.side);
    cell(tr, "filled", r.filled);
    cell(tr, "avg", r.avg_price);
    var status = cell(tr, "status", r.status);
    status.className = "status status-" + r.status;
    cell(tr, "broker", r.broker_status);
    var why = tr.querySelector("td.why");
    if (!why) { why = document.createElement("td"); why.className = "why"; tr.appendChild(why); }
    why.textContent = r.why ? r.why + " " : "";
    if (r.tag) {
      var small = document.createElement("small");
      small.textContent = r.why ? "(" + r.tag + ")" : r.tag;
      why.appendChild(small);
    }
  }

  function apply(data) {
    data.rows.forEach(function (r) {
      var tr = document.getElementById("o-" + r.id);
      if (!tr) {
        if (!firstPage || !r.matches) { return; }
        tr = document.createElement("tr");
        tr.id = "o-" + r.id;
        tr.dataset.commandId = r.command_id;
        fill(tr, r);
        body.insertBefore(tr, body.firstChild);
        var none = document.getElementById("no-orders");
        if (none) { none.remove(); }
        return;
      }
      fill(tr, r);
    });
    Object.keys(data.counts || {}).forEach(function (s) {
      var b = document.getElementById("count-" + s);
      if (b) { b.textContent = data.counts[s]; }
    });
    since = data.since || since;
    if (live) { live.textContent = "live " + new Date().toLocaleTimeString("en-IN", {timeZone: "Asia/Kolkata"}); }
  }

  function poll() {
    if (busy) { return; }
    busy = true;
    var url = "/ui/api/orders?since=" + encodeURIComponent(since) + (query ? "&" + query : "");
    fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (reply) {
      if (reply.status === 401) { window.location = "/ui/login"; return null; }
      return reply.ok ? reply.json() : null;
    }).then(function (data) {
      if (data) { apply(data); }
    }).catch(function () {
      if (live) { live.textContent = "offline"; }
    }).then(function () { busy = false; });
  }

  window.setInterval(poll, 1000);
})();
