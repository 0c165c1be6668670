// The monitor's only script: the time-travel slider, the live feed (server-sent events) and the kill button
// (sent by the browser to the gateway with the user's token, kept in sessionStorage and never sent to the monitor).
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
  var box = document.getElementById("kill-box");
  if (box) {
    var KEY = "pandaes.token";
    var result = document.getElementById("kill-result");
    var show = function () {
      var signed = !!sessionStorage.getItem(KEY);
      document.getElementById("signed-in").hidden = !signed;
      document.getElementById("signed-out").hidden = signed;
    };
    document.getElementById("sign-in").addEventListener("click", function () {
      var input = document.getElementById("token");
      var token = input.value.trim();
      input.value = "";
      if (token) { sessionStorage.setItem(KEY, token); }
      result.textContent = "";
      show();
    });
    document.getElementById("sign-out").addEventListener("click", function () {
      sessionStorage.removeItem(KEY);
      result.textContent = "";
      show();
    });
    document.getElementById("kill").addEventListener("click", function () {
      var pid = Number(box.getAttribute("data-pandaid"));
      result.className = "";
      result.textContent = "sending the kill to the gateway…";
      fetch(box.getAttribute("data-gateway") + "/api/v1/job/kill", {
        method: "POST", mode: "cors", credentials: "omit",
        headers: {"Authorization": "Bearer " + sessionStorage.getItem(KEY), "Content-Type": "application/json"},
        body: JSON.stringify({job_ids: [pid]})
      }).then(function (resp) {
        return resp.json().then(function (answer) { return {status: resp.status, answer: answer}; });
      }).then(function (r) {
        var ok = r.answer.success && r.answer.data && r.answer.data[0];
        result.className = ok ? "accepted" : "refused";
        result.textContent = ok ? "killed: the gateway accepted the kill of job " + pid + " (reload to see its state)"
          : "refused by the gateway (HTTP " + r.status + "): " + (r.answer.message || "the kill was not applied");
      }).catch(function (err) {
        result.className = "refused";
        result.textContent = "the gateway could not be reached: " + err;
      });
    });
    show();
  }
})();
