// components/common.py BelowFirstScreen: the part of a page below its first screen, mounted once the
// charts above it are drawn and the browser is next idle. Creating six grids and three charts took a
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

  // Run `mount` at the browser's first idle moment once the charts above `element` are drawn.
  function whenFirstScreenDrawn(element, mount) {
    var started = performance.now(), frame = null, idle = null;
    function look() {
      if (chartsAboveDrawn(element) || performance.now() - started > LONGEST_WAIT_MS) {
        idle = window.requestIdleCallback ? window.requestIdleCallback(mount, {timeout: 1000})
                                          : window.setTimeout(mount, 100);
      } else {
        frame = window.requestAnimationFrame(look);
      }
    }
    frame = window.requestAnimationFrame(look);
    return function cancel() {
      window.cancelAnimationFrame(frame);
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
    // data-mounted: for a test or a measurement to tell a page that is complete from one still to come.
    return React.createElement("div", {id: props.id, className: props.className, ref: container,
                                       "data-mounted": String(!!mounted)},
                               mounted ? props.children : null);
  }

  window.flowerbed = Object.assign(window.flowerbed || {}, {BelowFirstScreen: BelowFirstScreen});
})();
