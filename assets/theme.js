// Light / dark theme: the choice is kept in this browser; the system preference is the default.
(function () {
  var KEY = "flowerbed-theme";
  function preferred() {
    var saved = window.localStorage.getItem(KEY);
    if (saved === "light" || saved === "dark") { return saved; }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  function apply(theme) {
    document.documentElement.setAttribute("data-theme", theme);
    document.documentElement.style.colorScheme = theme;
  }
  apply(preferred());
  document.addEventListener("click", function (event) {
    if (!event.target.closest || !event.target.closest("#theme-toggle")) { return; }
    var next = document.documentElement.getAttribute("data-theme") === "dark" ? "light" : "dark";
    window.localStorage.setItem(KEY, next);
    apply(next);
  });
})();
