// components/common.py BelowFirstScreen: the part of a page below its first screen, mounted once the
// charts above it are drawn and the browser is next idle. Creating five grids and three charts took a
// 2-core machine a few hundred milliseconds, which the first screen's charts would otherwise wait for.
(function () {
  var React = window.React;
  var LONGEST_WAIT_MS = 3000;  // for the charts above: a chart that never draws holds nothing back for long

  function chartsAboveDrawn(element) {
    return Array.prototype.every.call(document.querySelectorAll(".dash-graph"), function (graph) {
      var above = graph.compareDocumentPosition(element) & Node.DOCUMENT_POSITION_FOLLOWING;
      return !above || graph.querySelector(".main-svg") !== null;
    });
  }

  // An address's #id that is not on the page yet is below its first screen: the user asked for it.
  function anchorWanted() {
    return location.hash.length > 1 && !document.getElementById(decodeURIComponent(location.hash.slice(1)));
  }

  // Run `mount` at the browser's first idle moment once the charts above `element` are drawn, or a timer tick
  // later when the address names an element still to come.
  function whenFirstScreenDrawn(element, mount) {
    var frame = null, idle = null, limit = null;
    function mountWhenIdle() {
      window.cancelAnimationFrame(frame);
      window.clearTimeout(limit);
      if (idle === null) {
        idle = window.requestIdleCallback ? window.requestIdleCallback(mount, {timeout: 1000})
                                          : window.setTimeout(mount, 100);
      }
    }
    function look() {
      if (chartsAboveDrawn(element)) { mountWhenIdle(); } else { frame = window.requestAnimationFrame(look); }
    }
    // A timer, not a frame: also in a hidden tab. Not within this effect either: Dash resets a new
    // component's props after its children's first effects, which would undo `mounted`. An address that
    // names a part of it waits for nothing else, not even an idle moment (a busy browser has none for a while).
    if (anchorWanted()) {
      limit = window.setTimeout(mount, 0);
    } else {
      limit = window.setTimeout(mountWhenIdle, LONGEST_WAIT_MS);
      frame = window.requestAnimationFrame(look);
    }
    return function cancel() {
      window.cancelAnimationFrame(frame);
      window.clearTimeout(limit);
      if (idle !== null) { (window.cancelIdleCallback || window.clearTimeout)(idle); }
    };
  }

  // `mounted` goes through Dash (setProps), not React state: Dash then renders the children with the
  // values callbacks gave them meanwhile, where a first render of theirs would use the page's first ones.
  function BelowFirstScreen(props) {
    var mounted = props.mounted, setProps = props.setProps, container = React.useRef(null);
    React.useEffect(function () {
      return mounted ? undefined : whenFirstScreenDrawn(container.current, function () { setProps({mounted: true}); });
    }, [mounted]);
    // data-mounted: for the style sheet (room kept for the part to come), a test or a measurement.
    return React.createElement("div", {id: props.id, className: props.className, ref: container,
                                       "data-mounted": String(!!mounted)},
                               mounted ? props.children : null);
  }

  window.flowerbed = Object.assign(window.flowerbed || {}, {BelowFirstScreen: BelowFirstScreen});
})();
