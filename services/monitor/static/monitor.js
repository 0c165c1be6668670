// The monitor's only script: the time-travel slider, the live feed (server-sent events), the kill and retry
// buttons and the log links (the browser calls the gateway with the user's token, kept in sessionStorage and
// never sent to the monitor).
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
  var box = document.getElementById("actions");
  if (box) {
    var KEY = "pandaes.token";
    var gateway = box.getAttribute("data-gateway");
    var pid = Number(box.getAttribute("data-pandaid"));
    var result = document.getElementById("action-result");
    var show = function () {
      var signed = !!sessionStorage.getItem(KEY);
      document.getElementById("signed-in").hidden = !signed;
      document.getElementById("signed-out").hidden = signed;
    };
    var say = function (cls, text, link) {
      result.className = cls;
      result.textContent = text;
      if (link) {
        var a = document.createElement("a");
        a.href = "/job/" + link;
        a.id = "retry-link";
        a.textContent = "job " + link;
        result.appendChild(document.createTextNode(" "));
        result.appendChild(a);
      }
    };
    var call = function (what, done) {
      say("", "sending the " + what + " to the gateway\u2026");
      fetch(gateway + "/api/v1/job/" + what, {
        method: "POST", mode: "cors", credentials: "omit",
        headers: {"Authorization": "Bearer " + sessionStorage.getItem(KEY), "Content-Type": "application/json"},
        body: JSON.stringify({job_ids: [pid]})
      }).then(function (resp) {
        return resp.json().then(function (answer) { return {status: resp.status, answer: answer}; });
      }).then(function (r) {
        var first = r.answer.success && r.answer.data && r.answer.data[0];
        if (first) { done(first); return; }
        say("refused", "refused by the gateway (HTTP " + r.status + "): " +
            (r.answer.message || "the " + what + " was not applied"));
      }).catch(function (err) {
        say("refused", "the gateway could not be reached: " + err);
      });
    };
    document.getElementById("sign-in").addEventListener("click", function () {
      var input = document.getElementById("token");
      var token = input.value.trim();
      input.value = "";
      if (token) { sessionStorage.setItem(KEY, token); }
      say("", "");
      show();
    });
    document.getElementById("sign-out").addEventListener("click", function () {
      sessionStorage.removeItem(KEY);
      say("", "");
      show();
    });
    var kill = document.getElementById("kill");
    if (kill) {
      kill.addEventListener("click", function () {
        call("kill", function () {
          say("accepted", "killed: the gateway accepted the kill of job " + pid + " (reload to see its state)");
        });
      });
    }
    var retry = document.getElementById("retry");
    if (retry) {
      retry.addEventListener("click", function () {
        call("retry", function (newId) { say("accepted", "retried: the next attempt is", newId); });
      });
    }
    // log links: signed in, the log is read with the token (text shown below the list, anything else saved)
    var view = document.getElementById("log-view");
    Array.prototype.forEach.call(document.querySelectorAll("a.log"), function (a) {
      a.addEventListener("click", function (ev) {
        var token = sessionStorage.getItem(KEY);
        if (!token) { return; }      // not signed in: an ordinary link (enough when the gateway has auth off)
        ev.preventDefault();
        var name = a.getAttribute("data-name");
        fetch(a.href, {mode: "cors", credentials: "omit", headers: {"Authorization": "Bearer " + token}})
          .then(function (resp) {
            if (!resp.ok) { throw new Error("HTTP " + resp.status); }
            var type = resp.headers.get("Content-Type") || "";
            if (/^text\//.test(type) || /\.(log|txt|out|err|json)$/.test(name)) {
              return resp.text().then(function (text) {
                view.hidden = false;
                view.setAttribute("data-name", name);
                view.textContent = text.length > 200000 ? text.slice(0, 200000) + "\n\u2026 (cut)" : text;
              });
            }
            return resp.blob().then(function (blob) {
              var save = document.createElement("a");
              save.href = URL.createObjectURL(blob);
              save.download = name;
              save.click();
            });
          }).catch(function (err) {
            view.hidden = false;
            view.textContent = "the gateway did not serve " + name + ": " + err;
          });
      });
    });
    show();
  }
})();
