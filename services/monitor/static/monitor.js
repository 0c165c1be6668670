// The monitor's only script: the time-travel slider and the live feed (server-sent events).
(function () {
  "use strict";
  var at = document.getElementById("at");
  if (at) {
    var out = document.getElementById("at-value");
    at.addEventListener("input", function () { out.textContent = at.value; });
    at.addEventListener("change", function () { at.form.submit(); });
  }
  var live = document.getElementById("live");
  if (live && window.EventSource) {
    var status = document.getElementById("live-status");
    var body = live.tBodies[0];
    var source = new EventSource(live.getAttribute("data-source"));
    source.onopen = function () { status.textContent = "live: new events appear at the top"; };
    source.onerror = function () { status.textContent = "disconnected; retrying…"; };
    source.onmessage = function (msg) {
      var ev = JSON.parse(msg.data);
      var tr = document.createElement("tr");
      tr.className = "new";
      tr.setAttribute("data-pandaid", ev.PandaID);
      tr.setAttribute("data-seq", ev.seq);
      var cells = [ev.time, null, ev.seq, ev.actor, ev.action, ev.from + " \u2192 " + ev.to];
      cells.forEach(function (text, i) {
        var td = document.createElement("td");
        if (i === 1) {
          var a = document.createElement("a");
          a.href = "/job/" + ev.PandaID;
          a.textContent = ev.PandaID;
          td.appendChild(a);
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      });
      body.insertBefore(tr, body.firstChild);
      while (body.rows.length > 500) { body.deleteRow(body.rows.length - 1); }
    };
  }
})();
