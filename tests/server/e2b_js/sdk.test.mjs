// The published e2b JS SDK (npm) against a real `corral serve`: E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY come from tests/server/test_e2b_js.py.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { CommandExitError, FileNotFoundError, NotFoundError, Sandbox } from 'e2b'
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter'

const tag = process.env.CORRAL_TEST_TAG

test('create, get info, list, set timeout and kill', async () => {
  const sbx = await Sandbox.create({ metadata: { suite: tag }, timeoutMs: 120_000 })
  try {
    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.equal(info.state, 'running')
    assert.equal(info.metadata.suite, tag)
    await sbx.setTimeout(300_000)
    const listed = await Sandbox.list({ query: { metadata: { suite: tag } } }).nextItems()
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
    assert.equal(await sbx.isRunning(), true)
  } finally {
    assert.equal(await sbx.kill(), true)
  }
  await assert.rejects(Sandbox.connect(sbx.sandboxId), NotFoundError)
})

test('commands: run, exit codes, env, cwd, user, background and stdin', async () => {
  const sbx = await Sandbox.create({ metadata: { suite: tag }, timeoutMs: 120_000 })
  try {
    const ran = await sbx.commands.run('echo hi; echo oops >&2')
    assert.deepEqual([ran.stdout, ran.stderr, ran.exitCode], ['hi\n', 'oops\n', 0])
    await assert.rejects(sbx.commands.run('echo partial; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stdout, 'partial\n')
      return true
    })
    const here = await sbx.commands.run('echo $A; pwd; whoami', { envs: { A: 'x' }, cwd: '/tmp' })
    assert.equal(here.stdout, 'x\n/tmp\nuser\n')
    const root = await sbx.commands.run('whoami', { user: 'root' })
    assert.equal(root.stdout, 'root\n')
    const chunks = []
    const streamed = await sbx.commands.run('for i in 1 2 3; do echo $i; done',
      { onStdout: (data) => chunks.push(data) })
    assert.equal(chunks.join(''), streamed.stdout)
    assert.equal(streamed.stdout, '1\n2\n3\n')

    const sleeper = await sbx.commands.run('sleep 600', { background: true })
    const listed = await sbx.commands.list()
    assert.ok(listed.some((p) => p.pid === sleeper.pid))
    assert.equal(await sbx.commands.kill(sleeper.pid), true)
    await assert.rejects(sleeper.wait(), CommandExitError)
    assert.equal(await sbx.commands.kill(sleeper.pid), false)

    const reader = await sbx.commands.run('read x; echo got $x', { background: true, stdin: true })
    await sbx.commands.sendStdin(reader.pid, 'hello\n')
    assert.equal((await reader.wait()).stdout, 'got hello\n')
  } finally {
    await sbx.kill()
  }
})

test('files: write, read, list, info, make_dir, rename, remove', async () => {
  const sbx = await Sandbox.create({ metadata: { suite: tag }, timeoutMs: 120_000 })
  try {
    const written = await sbx.files.write('notes/a.txt', 'hello')
    assert.equal(written.path, '/home/user/notes/a.txt')
    assert.equal(await sbx.files.read('notes/a.txt'), 'hello')
    const bytes = await sbx.files.read('/home/user/notes/a.txt', { format: 'bytes' })
    assert.deepEqual(Array.from(bytes), Array.from(Buffer.from('hello')))
    await sbx.files.write([{ path: '/tmp/m/1.txt', data: 'one' }, { path: '/tmp/m/2.txt', data: 'two' }])
    const listed = (await sbx.files.list('/tmp/m')).map((e) => e.name).sort()
    assert.deepEqual(listed, ['1.txt', '2.txt'])
    const info = await sbx.files.getInfo('notes/a.txt')
    assert.deepEqual([info.name, info.type, info.size, info.owner], ['a.txt', 'file', 5, 'user'])
    assert.equal(await sbx.files.makeDir('/tmp/d'), true)
    assert.equal(await sbx.files.makeDir('/tmp/d'), false)
    const moved = await sbx.files.rename('/tmp/m/1.txt', '/tmp/d/1.txt')
    assert.equal(moved.path, '/tmp/d/1.txt')
    assert.equal(await sbx.files.exists('/tmp/m/1.txt'), false)
    await sbx.files.remove('/tmp/d')
    assert.equal(await sbx.files.exists('/tmp/d'), false)
    await assert.rejects(sbx.files.read('/nope'), FileNotFoundError)
  } finally {
    await sbx.kill()
  }
})

test('code interpreter: run_code results, errors, streaming, env and contexts', async () => {
  const sbx = await CodeSandbox.create({ timeoutMs: 120_000 })
  try {
    const answer = await sbx.runCode('x = 21\nx * 2')
    assert.equal(answer.text, '42')
    assert.equal(answer.error, undefined)
    const failed = await sbx.runCode('1 / 0')
    assert.equal(failed.error.name, 'ZeroDivisionError')
    const lines = []
    await sbx.runCode('print("hi")', { onStdout: (out) => lines.push(out.line) })
    assert.deepEqual(lines, ['hi\n'])
    const env = await sbx.runCode('import os; os.environ.get("ONLY_HERE")', { envs: { ONLY_HERE: 'yes' } })
    assert.equal(env.text, "'yes'")
    const context = await sbx.createCodeContext()
    await sbx.runCode('y = 5', { context })
    assert.equal((await sbx.runCode('y', { context })).text, '5')
    assert.equal((await sbx.runCode('"y" in globals()')).text, 'False')
    const shell = await sbx.runCode('echo from bash', { language: 'bash' })
    assert.deepEqual(shell.logs.stdout, ['from bash\n'])
  } finally {
    await sbx.kill()
  }
})
