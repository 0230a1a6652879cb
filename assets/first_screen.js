// The first screen, drawn from the page's layout that comes with its HTML, while Dash's scripts load and run
// (half a second to a second on a 2-core machine before Dash draws anything). The drawing is a picture of
// the page: no ids, and nothing in it acts (inert) until the live page replaces it. Dash then takes the same
// layout from here instead of asking for it (_dash-layout), draws the live page out of sight, and the live
// page replaces the picture once its grids hold their rows. The server embeds the layout (app.py
// _Dash._first_screen); grids are drawn as tables with the grids' own formatters (dashAgGridFunctions.js).
(function () {
  var layoutSource = document.getElementById("first-layout");
  if (!layoutSource) { return; }
  var LONGEST_WAIT_MS = 10000;  // a live page that never settles (an error, a broker gone) shows all the same
  var MAX_ROWS = 60;

  // Dash's renderer asks for the layout once, with fetch: it gets the one the page came with.
  var layoutText = layoutSource.textContent;
  var layoutAddress = layoutSource.getAttribute("data-address");
  var realFetch = window.fetch;
  var answerLayout = window.fetch = function (input, init) {
    var address = typeof input === "string" ? input : input && input.url;
    var method = (init && init.method) || (input && input.method) || "GET";
    if (layoutText !== null && address === layoutAddress && method === "GET") {
      var text = layoutText;
      layoutText = null;
      if (window.fetch === answerLayout) { window.fetch = realFetch; }
      return Promise.resolve(new Response(text, {status: 200, headers: {"Content-Type": "application/json"}}));
    }
    return realFetch.apply(this, arguments);
  };

  var layout, firstRows;
  try {
    layout = JSON.parse(layoutText);
    firstRows = JSON.parse(document.getElementById("first-rows").textContent);
  } catch (garbled) { return; }

  var compiled = {};
  function evaluate(expression, params) {
    try {
      // As dash-ag-grid evaluates a column's {"function": ...}: params in scope, and the grid functions.
      compiled[expression] = compiled[expression] ||
        new Function("params", "with (window.dashAgGridFunctions || {}) { return (" + expression + "); }");
      return compiled[expression](params);
    } catch (failed) { return undefined; }
  }

  function classes(value) { return Array.isArray(value) ? value.join(" ") : value || ""; }

  function setStyle(element, style) {
    Object.keys(style || {}).forEach(function (key) {
      var value = style[key];
      element.style[key] = typeof value === "number" && !/^(flex|flexGrow|opacity|zIndex|fontWeight)$/.test(key) ? value + "px" : value;
    });
  }

  var ATTRIBUTES = {className: "class", title: "title", href: "href", role: "role", colSpan: "colspan",
                    rowSpan: "rowspan", dateTime: "datetime", type: "type", download: "download"};

  function element(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      var value = props[key];
      if (value === null || value === undefined || value === false) { return; }
      if (ATTRIBUTES[key]) { node.setAttribute(ATTRIBUTES[key], classes(value)); }
      else if (key === "style") { setStyle(node, value); }
      else if (key === "open" || key === "hidden") { node.setAttribute(key, ""); }
      else if (/^(data|aria)-/.test(key)) { node.setAttribute(key, value); }
    });
    append(node, children);
    return node;
  }

  function append(parent, children) {
    (Array.isArray(children) ? children : [children]).forEach(function (child) {
      var drawn = draw(child);
      if (drawn) { parent.appendChild(drawn); }
    });
  }

  function optionLabel(option) { return option !== null && typeof option === "object" ? option.label : option; }
  function optionValue(option) { return option !== null && typeof option === "object" ? option.value : option; }

  // Radio items and checklists as Dash 4 marks them up (the chips' CSS styles that markup).
  function choices(props, kind) {
    var chosen = [].concat(props.value === null || props.value === undefined ? [] : props.value);
    var box = element("div", {className: "dash-options-list " + classes(props.className), style: props.style}, []);
    (props.options || []).forEach(function (option) {
      var picked = chosen.indexOf(optionValue(option)) >= 0;
      var mark = element("input", {type: kind});
      mark.checked = picked;
      box.appendChild(element("label", {className: "dash-options-list-option" + (picked ? " selected" : ""), "aria-selected": String(picked)}, [
        element("span", {className: "dash-options-list-option-wrapper"}, mark),
        element("span", {className: "dash-options-list-option-text " + classes(props.labelClassName)}, optionLabel(option))
      ]));
    });
    return box;
  }

  function dropdown(props) {
    var chosen = [].concat(props.value === null || props.value === undefined ? [] : props.value);
    var labels = (props.options || []).filter(function (option) {
      return chosen.indexOf(optionValue(option)) >= 0;
    }).map(optionLabel);
    return element("div", {className: "first-dropdown " + classes(props.className), style: props.style},
                   labels.length ? labels.join(", ") : element("span", {className: "muted"}, props.placeholder || ""));
  }

  function input(props) {
    var node = element("input", {className: props.className, style: props.style, type: props.type || "text"});
    if (props.placeholder) { node.placeholder = props.placeholder; }
    if (props.value !== null && props.value !== undefined) { node.value = props.value; }
    return node;
  }

  function graph(props) {
    var height = ((props.figure || {}).layout || {}).height;
    return element("div", {className: props.className,
                           style: Object.assign({height: (height || 450) + "px"}, props.style)}, []);
  }

  // The columns a grid shows, leaves of column groups, with the width each takes in `room` px: those
  // flowerbedColumnsThatFit picks among the grid's columnPriority, the others as the grid defines them;
  // then the flex columns share what is left.
  function gridColumns(props, room) {
    var leaves = [];
    (props.columnDefs || []).forEach(function walk(column) {
      if (column.children) { column.children.forEach(walk); } else { leaves.push(column); }
    });
    var idOf = function (column) { return column.colId || column.field; };
    var widthOf = function (column) { return column.width || column.minWidth || 100; };
    var context = (props.dashGridOptions || {}).context || {};
    var priority = (context.columnPriority || []).filter(function (id) { return leaves.some(function (c) { return idOf(c) === id; }); });
    var others = leaves.filter(function (column) { return !column.hide && priority.indexOf(idOf(column)) < 0; });
    var fitting = window.flowerbedColumnsThatFit(priority, context.hiddenByUser || [], others.reduce(function (left, column) {
      return left - widthOf(column);
    }, room), function (id) { return widthOf(leaves.filter(function (c) { return idOf(c) === id; })[0]); });
    var columns = leaves.filter(function (column) {
      return priority.indexOf(idOf(column)) >= 0 ? fitting.show.indexOf(idOf(column)) >= 0 : !column.hide;
    });
    var fixed = 0, flex = 0;
    columns.forEach(function (column) { if (column.flex) { flex += column.flex; } else { fixed += widthOf(column); } });
    return columns.map(function (column) {
      var width = column.flex ? Math.max(column.minWidth || 50, (room - fixed) * column.flex / flex) : widthOf(column);
      return {def: column, width: Math.floor(width)};
    });
  }

  function cellText(column, row) {
    var def = column.def;
    var params = {data: row, value: def.field ? row[def.field] : undefined, colDef: def};
    if (def.valueGetter && def.valueGetter.function) { params.value = evaluate(def.valueGetter.function, params); }
    var shown = def.valueFormatter && def.valueFormatter.function ? evaluate(def.valueFormatter.function, params) : params.value;
    var ruled = Object.keys(def.cellClassRules || {}).filter(function (name) {
      return evaluate(def.cellClassRules[name], params);
    });
    return {text: shown === null || shown === undefined ? "" : String(shown),
            className: [classes(def.cellClass)].concat(ruled).join(" ")};
  }

  function headerText(def) {
    var shown = def.headerValueGetter && def.headerValueGetter.function ? evaluate(def.headerValueGetter.function, {colDef: def}) : null;
    return shown || def.headerName || def.field || "";
  }

  function grid(props) {
    var box = element("div", {className: "first-grid " + classes(props.className), style: props.style}, []);
    var options = props.dashGridOptions || {};
    var rows = props.rowData || firstRows[props.id] || [];
    box.firstScreenDraw = function () {  // once the box is in the page, where its width is known
      var columns = gridColumns(props, box.clientWidth || document.documentElement.clientWidth);
      var table = element("table", {style: {width: columns.reduce(function (sum, column) { return sum + column.width; }, 0) + "px"}}, []);
      var head = table.appendChild(element("tr", {style: {height: (options.headerHeight || 38) + "px"}}, []));
      columns.forEach(function (column) {
        var numeric = column.def.type === "numericColumn";
        head.appendChild(element("th", {className: numeric ? "numeric" : "", style: {width: column.width + "px"}}, headerText(column.def)));
      });
      rows.slice(0, MAX_ROWS).forEach(function (row) {
        var line = table.appendChild(element("tr", {style: {height: (options.rowHeight || 38) + "px"}}, []));
        columns.forEach(function (column) {
          var cell = cellText(column, row);
          line.appendChild(element("td", {className: cell.className + (column.def.type === "numericColumn" ? " numeric" : "")}, cell.text));
        });
      });
      if (!rows.length) {
        table.appendChild(element("tr", {}, element("td", {colSpan: String(columns.length), className: "first-grid-empty"},
                                                   (options.localeText || {}).noRowsToShow || "No rows")));
      }
      box.appendChild(table);
    };
    return box;
  }

  var DRAWN = {
    "dash_core_components.Link": function (props) { return element("a", props, props.children); },
    "dash_core_components.Input": input,
    "dash_core_components.Dropdown": dropdown,
    "dash_core_components.RadioItems": function (props) { return choices(props, "radio"); },
    "dash_core_components.Checklist": function (props) { return choices(props, "checkbox"); },
    "dash_core_components.Graph": graph,
    "dash_ag_grid.AgGrid": grid,
    "flowerbed.BelowFirstScreen": function () { return null; }
  };

  function draw(node) {
    if (node === null || node === undefined || typeof node === "boolean") { return null; }
    if (typeof node !== "object") { return document.createTextNode(String(node)); }
    if (node instanceof Node) { return node; }
    if (Array.isArray(node)) {
      var many = document.createDocumentFragment();
      append(many, node);
      return many;
    }
    var props = node.props || {};
    var drawer = DRAWN[node.namespace + "." + node.type];
    if (drawer) { return drawer(props); }
    if (node.namespace === "dash_html_components") { return element(node.type.toLowerCase(), props, props.children); }
    return props.children === undefined ? null : draw(props.children);  // Store, Interval, a dialog's provider...
  }

  var entry = document.getElementById("react-entry-point");
  var picture = document.createElement("div");
  picture.id = "first-screen";
  picture.inert = true;
  picture.setAttribute("aria-hidden", "true");

  // The live page has settled when it shows a page and each of its grids holds rows or says it has none.
  function settled() {
    if (!entry.querySelector("#page > *")) { return false; }
    var grids = entry.querySelectorAll(".ag-root-wrapper");
    if (grids.length < picture.querySelectorAll(".first-grid").length) { return false; }
    return Array.prototype.every.call(grids, function (gridRoot) {
      // A row with data has an id (a block still loading has rows without); an empty grid says so.
      return gridRoot.querySelector(".ag-row[row-id], .ag-overlay-no-rows-center");
    });
  }

  var watcher = new MutationObserver(function () { if (settled()) { reveal(); } });
  var limit = window.setTimeout(reveal, LONGEST_WAIT_MS);
  function reveal() {
    watcher.disconnect();
    window.clearTimeout(limit);
    picture.remove();
    document.documentElement.classList.remove("first-screen-shown");
  }
  watcher.observe(entry, {childList: true, subtree: true, attributes: true, attributeFilter: ["row-id"]});
  try {
    picture.appendChild(draw(layout));
    entry.parentNode.insertBefore(picture, entry);
    Array.prototype.forEach.call(picture.querySelectorAll(".first-grid"), function (box) { box.firstScreenDraw(); });
    document.documentElement.classList.add("first-screen-shown");
  } catch (failed) {  // a page drawn in part is no picture of it: the live page shows as it comes
    reveal();
    throw failed;
  }
})();
