// The search box of every page: finds packages in /packages.json (written with the simple
// index's root, seconds after a project gets its first file) as you type. Without JavaScript
// the box submits to /packages/, the page listing every package.
"use strict";

(function () {
  // A project's canonical name, as the index spells it (PEP 503).
  function canonical(name) {
    return name.toLowerCase().replace(/[-_.]+/g, "-");
  }

  var packages = null;
  function load() {
    if (!packages) {
      packages = fetch("/packages.json").then(function (response) {
        if (!response.ok) {
          throw new Error("packages.json: " + response.status);
        }
        return response.json();
      });
    }
    return packages;
  }

  // Names holding the query, those starting with it first, then the most downloaded.
  function find(rows, query, most) {
    var found = rows.filter(function (row) { return row[0].indexOf(query) >= 0; });
    found.sort(function (a, b) {
      var starts = (b[0].indexOf(query) === 0) - (a[0].indexOf(query) === 0);
      return starts || b[1] - a[1] || (a[0] < b[0] ? -1 : 1);
    });
    return found.slice(0, most);
  }

  function show(results, rows, query) {
    results.textContent = "";
    rows.forEach(function (row) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = "/project/" + row[0] + "/";
      link.textContent = row[0];
      item.appendChild(link);
      results.appendChild(item);
    });
    if (!rows.length && query) {
      var none = document.createElement("li");
      none.textContent = "No package matches " + query;
      results.appendChild(none);
    }
    results.hidden = !query;
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("search-box");
    var results = document.getElementById("search-results");
    if (!box || !results) {
      return;
    }
    box.addEventListener("input", function () {
      var query = canonical(box.value.trim());
      load().then(function (rows) {
        // A slower answer for an older query is not shown over a newer one.
        if (canonical(box.value.trim()) === query) {
          show(results, query ? find(rows, query, 20) : [], query);
        }
      }).catch(function (error) {
        results.textContent = "The package list cannot be read: " + error.message;
        results.hidden = false;
      });
    });
    // The package list page filters itself by the query it was opened with.
    var list = document.getElementById("packages");
    var asked = new URLSearchParams(window.location.search).get("q");
    if (list && asked) {
      var query = canonical(asked.trim());
      box.value = asked;
      Array.prototype.forEach.call(list.children, function (item) {
        item.hidden = item.textContent.indexOf(query) < 0;
      });
    }
  });
})();
