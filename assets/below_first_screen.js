// components/common.py BelowFirstScreen: the part of a page below its first screen, mounted once the
// browser is next idle after the page is drawn. Creating six grids and three charts took a 2-core
// machine a few hundred milliseconds before the first screen's charts could be drawn.
(function () {
  var React = window.React;

  function afterFirstPaint(run) {
    var idle = null;
    var frame = window.requestAnimationFrame(function () {
      idle = window.requestIdleCallback ? window.requestIdleCallback(run, {timeout: 1000})
                                        : window.setTimeout(run, 100);
    });
    return function cancel() {
      window.cancelAnimationFrame(frame);
      if (idle !== null) { (window.cancelIdleCallback || window.clearTimeout)(idle); }
    };
  }

  // `mounted` goes through Dash (setProps), not React state: Dash then renders the children with the
  // values callbacks gave them meanwhile, where a first render of theirs would use the page's first ones.
  function BelowFirstScreen(props) {
    var mounted = props.mounted, setProps = props.setProps;
    React.useEffect(function () {
      return mounted ? undefined : afterFirstPaint(function () { setProps({mounted: true}); });
    }, [mounted]);
    return React.createElement("div", {id: props.id, className: props.className}, mounted ? props.children : null);
  }

  window.flowerbed = Object.assign(window.flowerbed || {}, {BelowFirstScreen: BelowFirstScreen});
})();
