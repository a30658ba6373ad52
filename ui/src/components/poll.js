import { useEffect, useRef, useState } from 'preact/hooks';

/**
 * Calls load() now and then every `seconds` while the component is shown (slower while the
 * tab is hidden); a slow answer is never overtaken by the next call. `seconds` may be a
 * function of the last answer (to follow a rate the server states); 0 loads once.
 * Returns {data, error, reload}.
 */
export function usePoll(load, seconds, deps) {
  const [state, setState] = useState({ data: null, error: null });
  const tick = useRef(0);
  const reload = useRef(() => {});
  useEffect(() => {
    let stopped = false;
    let timer = null;
    let last = null;
    const run = async () => {
      clearTimeout(timer);
      const mine = ++tick.current;
      try {
        last = await load();
        if (!stopped && mine === tick.current) setState({ data: last, error: null });
      } catch (error) {
        if (!stopped && mine === tick.current) setState((s) => ({ data: s.data, error }));
      }
      const wait = typeof seconds === 'function' ? seconds(last) : seconds;
      if (!stopped && wait) timer = setTimeout(run, (document.hidden ? 4 : 1) * wait * 1000);
    };
    reload.current = run;
    run();
    return () => { stopped = true; clearTimeout(timer); };
  }, deps);
  return { ...state, reload: () => reload.current() };
}
